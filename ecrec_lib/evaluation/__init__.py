"""Offline evaluation: leave-one-out split, full-ranking metrics, baselines."""

from ecrec_lib.evaluation.baselines import (
    CatalogTooLargeError,
    ItemKNN,
    LinearTransitions,
    UserKNN,
    popularity_scores,
)
from ecrec_lib.evaluation.metrics import (
    DEFAULT_KS,
    evaluate_scores,
    evaluate_topk_lists,
    reference_evaluate,
)
from ecrec_lib.evaluation.split import EvalSet, leave_one_out

__all__ = [
    "DEFAULT_KS",
    "CatalogTooLargeError",
    "EvalSet",
    "ItemKNN",
    "LinearTransitions",
    "UserKNN",
    "evaluate_scores",
    "evaluate_topk_lists",
    "leave_one_out",
    "popularity_scores",
    "reference_evaluate",
]
