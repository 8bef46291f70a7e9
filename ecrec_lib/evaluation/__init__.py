"""Offline evaluation: splits, full-ranking metrics and the popularity baseline (the models
it evaluates, neighbourhood parts included, live in :mod:`ecrec_lib.models`)."""

from ecrec_lib.evaluation.metrics import (
    DEFAULT_KS,
    evaluate_scores,
    evaluate_topk_lists,
    reference_evaluate,
)
from ecrec_lib.evaluation.popularity import popularity_scores
from ecrec_lib.evaluation.split import EvalSet, leave_one_out

__all__ = [
    "DEFAULT_KS",
    "EvalSet",
    "evaluate_scores",
    "evaluate_topk_lists",
    "leave_one_out",
    "popularity_scores",
    "reference_evaluate",
]
