"""Evaluating the served ranking: full-ranking metrics over a model's own
:meth:`~ecrec_lib.models.api.Recommender.recommend` lists, so the promotion gate, training's
test figures and the quality benchmark measure exactly what batch scoring writes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from ecrec_lib.evaluation.split import EvalSet
from ecrec_lib.models.api import ItemSet, Recommender, UserHistory

# list length asked of the model per row: every metric at k <= SERVED_K is exact; a target
# beyond the list counts as unranked (so MRR is truncated at SERVED_K)
SERVED_K = 100


class ServedOutputError(ValueError):
    """A model's recommend returned unusable output (NaN scores, a wrong shape)."""


def served_score_fn(
    model: Recommender,
    histories: Sequence[UserHistory],
    eval_set: EvalSet,
    column_ids: Sequence[str],
    now_ts: int | None,
    items: ItemSet | None = None,
    k: int = SERVED_K,
) -> Callable[[np.ndarray], np.ndarray]:
    """A ``score_fn`` for :func:`~ecrec_lib.evaluation.evaluate_scores` built from the model's
    served lists: eval row ``r`` (``histories[r]``; ``eval_set`` in the columns ``column_ids``)
    gets each listed item's served score at its column and -inf elsewhere, so the metrics'
    pessimistic ties still apply (a model scoring every item alike gets no credit for the
    order its list happens to have; a target outside the list is unranked). Each row excludes its
    history items except its target (a repeat purchase stays rankable, as the metrics' protocol
    says); ``items``: what the model ranks (None: its own catalog, then ``column_ids`` must be
    its item ids)."""
    if len(histories) != len(eval_set):
        raise ValueError(f"served_score_fn needs one history per eval row ({len(eval_set)}), "
                         f"got {len(histories)}")
    ids = np.asarray([str(i) for i in column_ids], dtype=object)
    index = pd.Index(ids)

    def score_fn(pos: np.ndarray) -> np.ndarray:
        hist = [histories[i] for i in pos]
        exclude = [ids[np.asarray(eval_set.histories[i], dtype=np.int64)[
            np.asarray(eval_set.histories[i]) != eval_set.targets[i]]].tolist() for i in pos]
        got, scores = model.recommend(hist, now_ts, k, items=items, exclude=exclude)
        if np.shape(got) != (len(pos), k) or np.shape(scores) != (len(pos), k):
            raise ServedOutputError(f"recommend returned ids {np.shape(got)} and scores "
                                    f"{np.shape(scores)}, expected ({len(pos)}, {k}) each")
        if np.isnan(np.asarray(scores, dtype=np.float64)).any():
            raise ServedOutputError("recommend returned NaN scores")
        out = np.full((len(pos), len(ids)), -np.inf)
        got = np.asarray(got, dtype=object)
        missing = pd.isna(got)
        cols = index.get_indexer(pd.Index(np.where(missing, "", got).astype(str).ravel()))
        cols = np.where(missing, -1, cols.reshape(got.shape))
        rows, ranks = np.nonzero(cols >= 0)
        out[rows, cols[rows, ranks]] = np.asarray(scores, dtype=np.float64)[rows, ranks]
        return out

    return score_fn
