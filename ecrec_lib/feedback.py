"""The feedback loop: how yesterday's recommendations did on today's behaviour.

Pure functions on pandas DataFrames (no I/O); ``jobs/feedback.py`` reads the lake,
calls them and writes the ``metrics_daily`` / ``drift_daily`` warehouse tables.

Definitions (per ``strategy`` x ``model_version`` of the recommendation rows, plus an
overall row with both set to ``"all"``):

* ``hit_rate`` — share of users with recommendations who interacted (any item event)
  with at least one recommended item on the day; ``hit_rate_active`` uses only the
  users with recommendations who were active on the day as the denominator.
* ``ctr_proxy`` — clicks on recommended items / views of recommended items, counting only
  (user, item) pairs that were recommended to that user.
* ``coverage`` — distinct recommended items / catalog size.
* ``diversity`` — mean over users of the Gini-Simpson index of the top-level categories
  in their list (0: one category only; towards 1: many categories).
* ``novelty`` — mean self-information ``-log2(p(item))`` of recommended items, with
  ``p`` the (add-one smoothed) share of the day's active users who touched the item.
* ``cold_start_share`` — a day-level figure repeated on every row: share of the day's
  active users who had no recommendation list (new or unseen users, served by
  the cold-start fallbacks).

Drift is the population stability index (PSI) of a numeric column between a reference
and a current sample: below 0.1 stable, 0.1-0.25 moderate, above 0.25 major.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ecrec_lib.schema import ITEM_EVENT_TYPES

ALL = "all"
METRIC_COLUMNS = (
    "strategy",
    "model_version",
    "n_users_with_recs",
    "n_active_users_with_recs",
    "n_hit_users",
    "hit_rate",
    "hit_rate_active",
    "recommended_views",
    "recommended_clicks",
    "ctr_proxy",
    "n_recommended_items",
    "coverage",
    "diversity",
    "novelty",
    "cold_start_share",
)
DRIFT_COLUMNS = ("feature", "psi", "n_reference", "n_current", "status")
PSI_MODERATE = 0.1
PSI_MAJOR = 0.25


def _require(df: pd.DataFrame, cols: Sequence[str], name: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(
            f"{name} is missing columns {missing} (has {list(df.columns)}); "
            "pass the lake's clean/score tables (see ecrec_lib/schema.py)"
        )


def _gini_simpson(categories: pd.Series) -> float:
    shares = categories.value_counts(normalize=True).to_numpy()
    return float(1.0 - np.sum(shares**2))


def _group_metrics(
    recs: pd.DataFrame,
    interactions: pd.DataFrame,
    active_users: set[str],
    catalog_size: int,
    categories: Mapping[str, str],
    item_user_counts: pd.Series,
    n_day_users: int,
) -> dict[str, float | int]:
    users = set(recs["user_key"])
    matched = interactions.merge(
        recs[["user_key", "item_id"]].drop_duplicates(), on=["user_key", "item_id"], how="inner"
    )
    hit_users = set(matched["user_key"])
    active_with_recs = users & active_users
    views = int((matched["event_type"] == "view").sum())
    clicks = int((matched["event_type"] == "click").sum())
    rec_items = recs["item_id"].drop_duplicates()
    cats = recs.assign(category=recs["item_id"].map(categories).fillna("unknown"))
    diversity = cats.groupby("user_key")["category"].apply(_gini_simpson)
    p_item = (recs["item_id"].map(item_user_counts).fillna(0) + 1) / (n_day_users + 1)
    return {
        "n_users_with_recs": len(users),
        "n_active_users_with_recs": len(active_with_recs),
        "n_hit_users": len(hit_users),
        "hit_rate": len(hit_users) / len(users) if users else math.nan,
        "hit_rate_active": len(hit_users) / len(active_with_recs) if active_with_recs else math.nan,
        "recommended_views": views,
        "recommended_clicks": clicks,
        "ctr_proxy": clicks / views if views else math.nan,
        "n_recommended_items": len(rec_items),
        "coverage": len(rec_items) / catalog_size if catalog_size else math.nan,
        "diversity": float(diversity.mean()) if len(diversity) else math.nan,
        "novelty": float((-np.log2(p_item)).mean()) if len(p_item) else math.nan,
    }


def recommendation_metrics(
    recs: pd.DataFrame, events: pd.DataFrame, catalog: pd.DataFrame
) -> pd.DataFrame:
    """Metrics of yesterday's ``recs`` (user_topk rows) against today's clean ``events``.

    ``catalog`` needs ``item_id`` (and ``category`` for diversity). Returns one row per
    (strategy, model_version) plus the overall ``("all", "all")`` row, columns
    :data:`METRIC_COLUMNS`. Inputs are not modified.
    """
    _require(recs, ("user_key", "item_id", "strategy", "model_version"), "recommendations")
    _require(events, ("user_key", "event_type", "item_id"), "events")
    _require(catalog, ("item_id",), "catalog")
    recs = recs.assign(
        strategy=recs["strategy"].astype(str), model_version=recs["model_version"].astype(str)
    )
    interactions = events.loc[
        events["item_id"].notna() & events["event_type"].isin(ITEM_EVENT_TYPES),
        ["user_key", "item_id", "event_type"],
    ]
    active_users = set(events["user_key"].dropna())
    n_day_users = interactions["user_key"].nunique()
    item_user_counts = interactions.groupby("item_id")["user_key"].nunique()
    catalog_size = int(catalog["item_id"].nunique())
    categories = (
        catalog.drop_duplicates("item_id").set_index("item_id")["category"].astype(str).to_dict()
        if "category" in catalog.columns
        else {}
    )
    cold = len(active_users - set(recs["user_key"]))
    cold_share = cold / len(active_users) if active_users else math.nan

    args = (interactions, active_users, catalog_size, categories, item_user_counts, n_day_users)
    rows = [{"strategy": ALL, "model_version": ALL, **_group_metrics(recs, *args)}]
    for (strategy, version), group in recs.groupby(["strategy", "model_version"], sort=True):
        rows.append({"strategy": strategy, "model_version": version, **_group_metrics(group, *args)})
    out = pd.DataFrame(rows)
    out["cold_start_share"] = cold_share
    return out[list(METRIC_COLUMNS)]


def psi(reference: Sequence[float] | pd.Series, current: Sequence[float] | pd.Series,
        bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference`` (quantile bins).

    Bin edges are the reference's quantiles, so each reference bin holds about the same
    share; empty bins get a small floor so the index stays finite.
    """
    ref = np.asarray(pd.Series(reference, dtype="float64").dropna())
    cur = np.asarray(pd.Series(current, dtype="float64").dropna())
    if len(ref) == 0 or len(cur) == 0:
        raise ValueError(
            f"PSI needs non-empty samples (reference has {len(ref)}, current {len(cur)} values)"
        )
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    n_bins = len(edges) + 1
    e = np.bincount(np.searchsorted(edges, ref, side="left"), minlength=n_bins) / len(ref)
    a = np.bincount(np.searchsorted(edges, cur, side="left"), minlength=n_bins) / len(cur)
    floor = 1e-4
    e = np.clip(e, floor, None)
    a = np.clip(a, floor, None)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_status(value: float) -> str:
    if value >= PSI_MAJOR:
        return "major"
    if value >= PSI_MODERATE:
        return "moderate"
    return "stable"


def drift_table(pairs: Mapping[str, tuple[pd.Series | None, pd.Series | None]]) -> pd.DataFrame:
    """One PSI row per named (reference, current) pair; a missing side gives ``no_reference``."""
    rows = []
    for feature, (ref, cur) in pairs.items():
        if ref is None or cur is None or ref.dropna().empty or cur.dropna().empty:
            rows.append(
                {"feature": feature, "psi": math.nan,
                 "n_reference": 0 if ref is None else int(ref.notna().sum()),
                 "n_current": 0 if cur is None else int(cur.notna().sum()),
                 "status": "no_reference"}
            )
            continue
        value = psi(ref, cur)
        rows.append(
            {"feature": feature, "psi": value, "n_reference": int(ref.notna().sum()),
             "n_current": int(cur.notna().sum()), "status": psi_status(value)}
        )
    return pd.DataFrame(rows, columns=list(DRIFT_COLUMNS))


@dataclass(frozen=True)
class DropCheck:
    """Result of comparing today's hit rate with its trailing mean."""

    ok: bool
    hit_rate: float
    trailing_mean: float | None
    threshold: float
    n_history: int
    message: str


def check_hit_rate_drop(hit_rate: float, history: Sequence[float], threshold: float) -> DropCheck:
    """Fail when ``hit_rate`` < (1 - threshold) x mean of the trailing ``history``.

    No history (the first days) or an undefined hit rate cannot be judged: ``ok=True``
    with a message saying so.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"feedback_drop_threshold must be in (0, 1), got {threshold}")
    past = [h for h in history if h is not None and not math.isnan(h)]
    if math.isnan(hit_rate):
        return DropCheck(True, hit_rate, None, threshold, len(past),
                         "hit rate undefined (no users with recommendations): not checked")
    if not past:
        return DropCheck(True, hit_rate, None, threshold, 0,
                         f"hit rate {hit_rate:.4f}; no trailing history yet: not checked")
    mean = float(np.mean(past))
    floor = (1.0 - threshold) * mean
    if hit_rate < floor:
        return DropCheck(
            False, hit_rate, mean, threshold, len(past),
            f"ALERT: hit rate {hit_rate:.4f} dropped below {floor:.4f} = (1 - {threshold}) x "
            f"the trailing {len(past)}-day mean {mean:.4f}. Check the latest model version, "
            "the scoring inputs and the drift table; roll back the champion alias if needed.",
        )
    return DropCheck(True, hit_rate, mean, threshold, len(past),
                     f"hit rate {hit_rate:.4f} vs trailing {len(past)}-day mean {mean:.4f}: ok")


__all__ = [
    "ALL",
    "DRIFT_COLUMNS",
    "DropCheck",
    "METRIC_COLUMNS",
    "check_hit_rate_drop",
    "drift_table",
    "psi",
    "psi_status",
    "recommendation_metrics",
]
