"""One day of sessions, drawn in bulk: every step is a numpy operation over all sessions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ecrec_lib.generator import constants as K
from ecrec_lib.generator.catalog import (
    DAY,
    MAX_BRANDS,
    MAX_NOUNS,
    N_CATEGORIES,
    SUBCATS,
    Catalog,
)
from ecrec_lib.generator.population import Population
from ecrec_lib.generator.vocab import CATEGORIES, VARIANTS

# Event type codes, aligned with schema.EVENT_TYPES.
SEARCH, VIEW, CLICK, ADD_TO_CART, PURCHASE = range(5)
_SUB_INDEX_IN_CAT = np.array([s for _, s in SUBCATS])
_SUB_FIRST = np.array([next(g for g, (a, _) in enumerate(SUBCATS) if a == c) for c in range(N_CATEGORIES)])
_N_SUBS = np.array([len(c.subcategories) for c in CATEGORIES])


def expected_events_per_session() -> float:
    """Mean events per session implied by the funnel constants."""
    per_view = 1 + K.CLICK_PER_VIEW * (
        1 + K.ADD_TO_CART_PER_CLICK * (1 + K.PURCHASE_PER_ADD_TO_CART)
    )
    return K.P_SEARCH_SESSION + K.MEAN_VIEWS_PER_SESSION * per_view


@dataclass
class DayEvents:
    """Column arrays of one day's events (one row per event)."""

    ts: np.ndarray  # epoch seconds
    etype: np.ndarray  # code, see SEARCH..PURCHASE
    user: np.ndarray
    session: np.ndarray  # index into session_ids
    item: np.ndarray  # -1 for search
    query: np.ndarray  # index into queries, -1 for non-search
    position: np.ndarray  # 0 = null
    quantity: np.ndarray  # 0 = null
    device: np.ndarray
    queries: list[str]
    n_sessions: int

    def __len__(self) -> int:
        return len(self.ts)


class _Pool:
    """Weighted sampling of items within groups: one cumulative sum, searchsorted per draw."""

    def __init__(self, items: np.ndarray, keys: np.ndarray, weights: np.ndarray) -> None:
        order = np.lexsort((items, keys))
        self.items = items[order]
        k = keys[order]
        self.cum = np.cumsum(weights[order])
        self.keys, self.start = np.unique(k, return_index=True)
        self.end = np.r_[self.start[1:], len(k)]
        cum0 = np.r_[0.0, self.cum]
        self.lo, self.hi = cum0[self.start], cum0[self.end]

    def draw(self, keys: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One item per key (weighted within the key's group), -1 where the group is empty."""
        if len(self.keys) == 0:
            return np.full(len(keys), -1)
        pos = np.clip(np.searchsorted(self.keys, keys), 0, len(self.keys) - 1)
        ok = (self.keys[pos] == keys) & (self.hi[pos] > self.lo[pos])
        x = self.lo[pos] + u * (self.hi[pos] - self.lo[pos])
        j = np.clip(np.searchsorted(self.cum, x, side="right"), self.start[pos], self.end[pos] - 1)
        return np.where(ok, self.items[j], -1)


def _first_valid(*candidates: np.ndarray) -> np.ndarray:
    out = candidates[0].copy()
    for c in candidates[1:]:
        out = np.where(out >= 0, out, c)
    return out


def simulate_day(
    rng: np.random.Generator,
    catalog: Catalog,
    users: Population,
    day: int,
    day_ts: int,
    in_stock: np.ndarray,
    n_sessions: int | None,
) -> DayEvents:
    """Sessions of ``day``: who comes, what they look for, and how far down the funnel."""
    # Items listed today become visible tomorrow: today they exist only in the catalog.
    live = np.flatnonzero(catalog.created_day < day)
    if len(live) == 0:
        raise ValueError("no item is listed before the first day; raise --items")
    weight = catalog.popularity[live] * np.where(in_stock[live], 1.0, K.OUT_OF_STOCK_WEIGHT)
    sub_l, cat_l = catalog.sub[live], catalog.cat[live]
    pools = {
        "global": _Pool(live, np.zeros(len(live), dtype=np.int64), weight),
        "cat": _Pool(live, cat_l, weight),
        "sub": _Pool(live, sub_l, weight),
        "brand": _Pool(live, sub_l * MAX_BRANDS + catalog.brand[live], weight),
        "tier": _Pool(live, sub_l * 3 + catalog.tier[live], weight),
        "noun": _Pool(live, sub_l * MAX_NOUNS + catalog.noun[live], weight),
    }

    eligible = np.flatnonzero(users.first_day <= day)
    newcomers = np.flatnonzero(users.first_day == day)
    if n_sessions is None:
        n_sessions = int(round(len(eligible) * K.SESSIONS_PER_USER_PER_DAY))
    n_sessions = max(n_sessions, len(newcomers), 1)
    p = users.activity[eligible] / users.activity[eligible].sum()
    s_user = np.concatenate(
        [newcomers, rng.choice(eligible, size=n_sessions - len(newcomers), p=p)]
    )
    S = len(s_user)

    # What the session is about: a category from the user's taste, one of its subcategories.
    cum = np.cumsum(users.cat_weights[s_user], axis=1)
    s_cat = np.minimum((rng.random(S)[:, None] * cum[:, -1:] > cum).sum(axis=1), N_CATEGORIES - 1)
    s_sub = _SUB_FIRST[s_cat] + np.floor(rng.random(S) * _N_SUBS[s_cat]).astype(np.int64)
    s_search = rng.random(S) < K.P_SEARCH_SESSION
    s_device = np.where(
        rng.random(S) < K.MAIN_DEVICE_SHARE, users.device[s_user], rng.integers(0, 4, S)
    )
    n_views = 1 + rng.poisson(K.MEAN_VIEWS_PER_SESSION - 1, S)

    # Views: session index, rank within the session, and where the item comes from.
    V = int(n_views.sum())
    v_sess = np.repeat(np.arange(S), n_views)
    v_first = np.r_[0, np.cumsum(n_views)[:-1]]
    v_rank = np.arange(V) - v_first[v_sess]
    v_user = s_user[v_sess]
    v_cat, v_sub = s_cat[v_sess], s_sub[v_sess]
    u_mode, u_pool = rng.random(V), rng.random(V)
    u = rng.random((6, V))
    by_brand = pools["brand"].draw(v_sub * MAX_BRANDS + users.pref_brand[v_user, v_cat], u[0])
    by_tier = pools["tier"].draw(v_sub * 3 + users.price_tier[v_user], u[1])
    by_sub = pools["sub"].draw(v_sub, u[2])
    by_cat = pools["cat"].draw(v_cat, u[3])
    by_any = pools["global"].draw(np.zeros(V, dtype=np.int64), u[4])
    sub_mix = np.where(
        u_pool < K.P_POOL_BRAND,
        by_brand,
        np.where(u_pool < K.P_POOL_BRAND + K.P_POOL_TIER, by_tier, by_sub),
    )
    sub_mix = _first_valid(sub_mix, by_sub, by_cat, by_any)
    item = np.where(
        u_mode < K.P_VIEW_SUBCATEGORY,
        sub_mix,
        np.where(u_mode < K.P_VIEW_SUBCATEGORY + K.P_VIEW_CATEGORY, _first_valid(by_cat, by_any), by_any),
    )
    # Search sessions: the first result is what the user had in mind (the query is built
    # from its words) and half of the others share its noun.
    first_of_search = s_search[v_sess] & (v_rank == 0)
    item = np.where(first_of_search, sub_mix, item)
    target = item[v_first]  # per session
    t_noun = catalog.sub[target] * MAX_NOUNS + catalog.noun[target]
    by_noun = pools["noun"].draw(t_noun[v_sess], u[5])
    use_noun = s_search[v_sess] & (v_rank > 0) & (u_mode < K.P_SEARCH_NOUN_POOL) & (by_noun >= 0)
    item = np.where(use_noun, by_noun, item)
    # Small pools repeat the previous result; show something else from the category instead.
    repeat = (v_rank > 0) & (item == np.r_[-1, item[:-1]])
    item = np.where(repeat, _first_valid(by_cat, by_any), item)

    clicked = rng.random(V) < K.CLICK_PER_VIEW
    carted = clicked & (rng.random(V) < K.ADD_TO_CART_PER_CLICK)
    bought = carted & (rng.random(V) < K.PURCHASE_PER_ADD_TO_CART)
    qty = 1 + (rng.random(V) < K.QUANTITY_TWO) + (rng.random(V) < K.QUANTITY_THREE)

    # Timeline: each view occupies a slot (dwell, then click/cart/checkout when they happen).
    gap = rng.exponential(1.0, (4, V))
    d_click = 2 + (gap[0] * 8).astype(np.int64)
    d_cart = 5 + (gap[1] * 30).astype(np.int64)
    d_buy = 10 + (gap[2] * 60).astype(np.int64)
    slot = (
        3 + (gap[3] * 20).astype(np.int64)
        + clicked * (d_click + carted * (d_cart + bought * d_buy))
    )
    lead = np.where(s_search, 2 + (rng.exponential(5.0, S)).astype(np.int64), 0)
    csum = np.cumsum(slot)
    v_off = lead[v_sess] + (csum - slot) - (csum[v_first] - slot[v_first])[v_sess]
    s_dur = lead + np.add.reduceat(slot, v_first)
    hour = rng.choice(24, size=S, p=np.array(K.HOURLY_WEIGHTS) / sum(K.HOURLY_WEIGHTS))
    s_start = np.minimum(hour * 3600 + rng.integers(0, 3600, S), DAY - 1 - s_dur)
    s_start = np.maximum(s_start, 0)
    v_ts = day_ts + s_start[v_sess] + v_off

    # Queries: words of the target item and its subcategory, lower case as typed.
    q_sess = np.flatnonzero(s_search)
    templates = rng.choice(len(K.QUERY_TEMPLATE_WEIGHTS), len(q_sess), p=K.QUERY_TEMPLATE_WEIGHTS)
    caps = rng.random(len(q_sess))
    queries = [
        _query(catalog, int(target[s]), int(t), float(c))
        for s, t, c in zip(q_sess.tolist(), templates.tolist(), caps.tolist(), strict=True)
    ]

    nv, nc, na, nb = V, int(clicked.sum()), int(carted.sum()), int(bought.sum())
    ns = len(q_sess)
    # Order within a session: search, then per view: view, click, cart, purchase.
    parts = {
        "ts": [day_ts + s_start[q_sess], v_ts, (v_ts + d_click)[clicked],
               (v_ts + d_click + d_cart)[carted], (v_ts + d_click + d_cart + d_buy)[bought]],
        "etype": [np.full(ns, SEARCH), np.full(nv, VIEW), np.full(nc, CLICK),
                  np.full(na, ADD_TO_CART), np.full(nb, PURCHASE)],
        "session": [q_sess, v_sess, v_sess[clicked], v_sess[carted], v_sess[bought]],
        "item": [np.full(ns, -1), item, item[clicked], item[carted], item[bought]],
        "query": [np.arange(ns), np.full(nv, -1), np.full(nc, -1), np.full(na, -1), np.full(nb, -1)],
        "position": [np.zeros(ns, dtype=np.int64), v_rank + 1, (v_rank + 1)[clicked],
                     np.zeros(na, dtype=np.int64), np.zeros(nb, dtype=np.int64)],
        "quantity": [np.zeros(ns, dtype=np.int64), np.zeros(nv, dtype=np.int64),
                     np.zeros(nc, dtype=np.int64), qty[carted], qty[bought]],
    }
    cols = {k: np.concatenate(v) for k, v in parts.items()}
    order = np.lexsort((cols["etype"], cols["session"], cols["ts"]))
    cols = {k: v[order] for k, v in cols.items()}
    return DayEvents(
        ts=cols["ts"], etype=cols["etype"], user=s_user[cols["session"]], session=cols["session"],
        item=cols["item"], query=cols["query"], position=cols["position"],
        quantity=cols["quantity"], device=s_device[cols["session"]], queries=queries,
        n_sessions=S,
    )


def _query(catalog: Catalog, i: int, template: int, cap: float) -> str:
    """A search query made of words of item ``i``'s title and category."""
    c = CATEGORIES[int(catalog.cat[i])]
    noun = catalog.noun_word(i)
    if template == 0:
        q = noun
    elif template == 1:
        q = f"{c.adjectives[int(catalog.adj[i])]} {noun}"
    elif template == 2:
        q = f"{catalog.brand_name(i).lower()} {noun}"
    elif template == 3:
        q = f"{c.materials[int(catalog.mat[i])]} {noun}"
    elif template == 4:
        q = f"{noun} {VARIANTS[int(catalog.variant[i])]}"
    else:
        q = c.subcategories[int(_SUB_INDEX_IN_CAT[catalog.sub[i]])].name.lower()
    # People type in all sorts of case; the clean stage normalizes it.
    if cap < 0.1:
        q = q.capitalize()
    elif cap < 0.13:
        q = q.upper()
    return q
