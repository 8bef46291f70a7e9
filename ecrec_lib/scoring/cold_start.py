"""Trending lists (global and per segment) and recommendations for users without history.

A user seen in the day's clean events with no item event (e.g. only searches), or a
user_sequences row with empty ``item_ids``, has nothing for the user tower to read: they get the
trending list of their segment (``country=XX`` first, then ``device=YY``) when it is long
enough, else the global one, marked by ``strategy``. New *items* need nothing here: the item
tower embeds them from text (``Recommender.encode_items``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ecrec_lib.schema import ITEM_EVENT_TYPES, TRENDING_COLUMNS, USER_TOPK_COLUMNS

STRATEGY_TWO_TOWER = "two_tower"
STRATEGY_SEGMENT = "segment_trending"
STRATEGY_GLOBAL = "global_trending"
STRATEGIES = (STRATEGY_TWO_TOWER, STRATEGY_SEGMENT, STRATEGY_GLOBAL)
GLOBAL_SEGMENT = "global"
# Weight of each item event in a segment's trending count (a purchase says more than a view).
EVENT_WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 5.0}


def segment_name(kind: str, value: object) -> str:
    return f"{kind}={value}"


def global_trending_scores(catalog: pd.DataFrame, item_stats: pd.DataFrame | None) -> pd.Series:
    """trending_score per in-stock catalog item (popularity breaks ties; 0 for items without
    stats), indexed by item_id."""
    eligible = catalog.loc[catalog["in_stock"].fillna(False).astype(bool), "item_id"]
    base = pd.DataFrame({"item_id": eligible.astype(str)})
    if item_stats is not None and len(item_stats):
        stats = item_stats[["item_id", "trending_score", "popularity"]].copy()
        stats["item_id"] = stats["item_id"].astype(str)
        base = base.merge(stats, on="item_id", how="left")
    else:
        base["trending_score"] = 0.0
        base["popularity"] = 0.0
    base = base.fillna({"trending_score": 0.0, "popularity": 0.0})
    # Tiny popularity share: orders items with equal trending score without changing the rest.
    pop = base["popularity"].to_numpy(np.float64)
    pop_share = pop / pop.max() if len(pop) and pop.max() > 0 else np.zeros(len(pop))
    score = base["trending_score"].to_numpy(np.float64) + 1e-6 * pop_share
    return pd.Series(score, index=base["item_id"].to_numpy()).sort_index()


def _ranked(scores: pd.Series, k: int) -> pd.DataFrame:
    df = scores.rename("score").rename_axis("item_id").reset_index()
    df = df.sort_values(["score", "item_id"], ascending=[False, True], kind="stable").head(k)
    df["rank"] = np.arange(1, len(df) + 1, dtype=np.int32)
    return df


def trending_table(
    ds: str,
    catalog: pd.DataFrame,
    item_stats: pd.DataFrame | None,
    events: pd.DataFrame | None,
    k: int,
) -> pd.DataFrame:
    """The ``trending`` table: segment 'global' from item_stats.trending_score, and one list
    per 'country=XX' / 'device=YY' from the day's weighted item events in that segment,
    back-filled with the global order (score 0) so each list has min(k, in-stock) items."""
    glob = global_trending_scores(catalog, item_stats)
    frames = [_ranked(glob, k).assign(segment=GLOBAL_SEGMENT)]
    if events is not None and len(events):
        ev = events[events["event_type"].isin(ITEM_EVENT_TYPES) & events["item_id"].notna()]
        ev = ev[ev["item_id"].astype(str).isin(glob.index)]
        w = ev["event_type"].map(EVENT_WEIGHTS).fillna(1.0)
        ev = ev.assign(w=w, item_id=ev["item_id"].astype(str))
        global_order = _ranked(glob, len(glob))["item_id"].tolist()
        for kind in ("country", "device"):
            for value, grp in ev.dropna(subset=[kind]).groupby(kind, sort=True):
                counts = grp.groupby("item_id")["w"].sum()
                seg = _ranked(counts / counts.sum(), k)
                # Back-fill with the global order at score 0 (ranks stay strictly ordered).
                fill = [i for i in global_order if i not in set(seg["item_id"])][: k - len(seg)]
                fill_df = pd.DataFrame({"item_id": fill, "score": 0.0})
                seg = pd.concat([seg[["item_id", "score"]], fill_df], ignore_index=True)
                seg["rank"] = np.arange(1, len(seg) + 1, dtype=np.int32)
                frames.append(seg.assign(segment=segment_name(kind, value)))
    out = pd.concat(frames, ignore_index=True)
    out["ds"] = ds
    out["score"] = out["score"].astype(np.float64)
    return out[list(TRENDING_COLUMNS)]


def cold_users(events: pd.DataFrame | None, sequences: pd.DataFrame) -> pd.DataFrame:
    """Users needing cold start: rows of ``sequences`` with empty item_ids, plus users of the
    day's events absent from ``sequences`` (e.g. search-only). Columns user_key, country, device
    (most recent values)."""
    empty = sequences[sequences["item_ids"].map(lambda v: v is None or len(v) == 0)]
    out = [empty[["user_key", "country", "device"]]]
    if events is not None and len(events):
        known = set(sequences["user_key"])
        ev = events[~events["user_key"].isin(known)]
        if len(ev):
            if "event_time" in ev.columns:
                ev = ev.sort_values("event_time", kind="stable")
            last = ev.groupby("user_key", sort=True)[["country", "device"]].last().reset_index()
            out.append(last)
    users = pd.concat(out, ignore_index=True).drop_duplicates("user_key", keep="first")
    return users.sort_values("user_key", kind="stable").reset_index(drop=True)


def cold_start_recommendations(
    ds: str, users: pd.DataFrame, trending: pd.DataFrame, k: int, model_version: str
) -> pd.DataFrame:
    """user_topk rows for cold users: their country list, else device list, when it holds
    min(k, global) items; else the global list."""
    lists = {seg: grp.sort_values("rank") for seg, grp in trending.groupby("segment")}
    glob = lists.get(GLOBAL_SEGMENT)
    if glob is None or users.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in USER_TOPK_COLUMNS})
    need = min(k, len(glob))
    frames = []
    for seg_key, grp in users.groupby(
        users.apply(lambda r: _pick_segment(r, lists, need), axis=1), sort=True
    ):
        rec = lists[seg_key].head(k)
        strategy = STRATEGY_GLOBAL if seg_key == GLOBAL_SEGMENT else STRATEGY_SEGMENT
        rows = grp[["user_key"]].merge(rec[["rank", "item_id", "score"]], how="cross")
        frames.append(rows.assign(strategy=strategy))
    out = pd.concat(frames, ignore_index=True)
    out["ds"] = ds
    out["reason_item_id"] = None
    out["model_version"] = model_version
    return out[list(USER_TOPK_COLUMNS)]


def _pick_segment(row: pd.Series, lists: dict[str, pd.DataFrame], need: int) -> str:
    for kind in ("country", "device"):
        value = row.get(kind)
        if isinstance(value, str) and value:
            seg = segment_name(kind, value)
            if seg in lists and len(lists[seg]) >= need:
                return seg
    return GLOBAL_SEGMENT
