"""Turn a day's event columns into raw JSON lines, injecting the requested dirt.

Serialization is string formatting over pre-encoded per-item / per-user JSON fragments,
which keeps a million events at a couple of seconds without any JSON library.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ecrec_lib.generator import constants as K
from ecrec_lib.generator.catalog import CatalogJson
from ecrec_lib.generator.population import Population, user_id
from ecrec_lib.generator.sessions import CLICK, VIEW, DayEvents
from ecrec_lib.generator.vocab import COUNTRIES, OTHER_OFFSETS_MINUTES
from ecrec_lib.schema import DEVICES, EVENT_TYPES

_FMT = (
    '{"event_id":"%s","event_time":"%s","user_id":%s,"session_id":"%s","event_type":"%s",'
    '"item_id":%s,"query":%s,"position":%s,"price":%s,"quantity":%s,"device":"%s",'
    '"country":"%s","ip":%s,"email":%s}'
)
_EXTRA_PII = (
    ',"user_agent":"Mozilla/5.0 (X11; Linux x86_64)","phone":"+1-555-0100",'
    '"name":"Jane Doe","address":"1 Example Street"}'
)
UNKNOWN_ITEM_BASE = 9_000_000  # item ids P9000000+ are in no catalog


@dataclass
class Rendered:
    lines: list[str]  # in file order
    dirt: dict[str, int]


def _hex_ids(rng: np.random.Generator, n: int, nbytes: int) -> list[str]:
    text = rng.bytes(n * nbytes).hex()
    w = 2 * nbytes
    return [text[i : i + w] for i in range(0, n * w, w)]


def _iso(ts: np.ndarray, offset_min: np.ndarray | None = None) -> list[str]:
    if offset_min is None:
        text = np.datetime_as_string(ts.astype("datetime64[s]"), unit="s").tolist()
        return [t + "+00:00" for t in text]
    local = np.datetime_as_string((ts + offset_min * 60).astype("datetime64[s]"), unit="s")
    return [
        f"{t}{'+' if m >= 0 else '-'}{abs(m) // 60:02d}:{abs(m) % 60:02d}"
        for t, m in zip(local.tolist(), offset_min.tolist(), strict=True)
    ]


def add_bots(
    events: DayEvents, rng: np.random.Generator, n_items_live: np.ndarray, day: int, day_ts: int,
    n_bot_events: int,
) -> tuple[DayEvents, np.ndarray]:
    """Append bot traffic: a few users firing hundreds of view/click events a minute.

    Returns the extended events and a mask of the bot rows. Bot users get ids far above the
    real ones (``U9dddkkk``) and are absent from the truth sidecar.
    """
    n_bots = max(1, -(-n_bot_events // K.BOT_EVENTS_PER_BOT))
    per_bot = np.full(n_bots, n_bot_events // n_bots)
    per_bot[: n_bot_events % n_bots] += 1
    rate = rng.uniform(*K.BOT_EVENTS_PER_MINUTE, n_bots) / 60.0  # events per second
    start = rng.integers(0, 86_400 - 3_600, n_bots)
    bot = np.repeat(np.arange(n_bots), per_bot)
    span = (per_bot / rate)[bot]
    ts = day_ts + start[bot] + np.floor(rng.random(len(bot)) * span).astype(np.int64)
    n = len(bot)
    first_session = events.n_sessions
    bot_user_base = bot_user_index(day)
    ext = DayEvents(
        ts=np.concatenate([events.ts, ts]),
        etype=np.concatenate([events.etype, np.where(rng.random(n) < 0.8, VIEW, CLICK)]),
        user=np.concatenate([events.user, bot_user_base + bot]),
        session=np.concatenate([events.session, first_session + bot]),
        item=np.concatenate([events.item, rng.choice(n_items_live, size=n)]),
        query=np.concatenate([events.query, np.full(n, -1)]),
        position=np.concatenate([events.position, rng.integers(1, 51, n)]),
        quantity=np.concatenate([events.quantity, np.zeros(n, dtype=np.int64)]),
        device=np.concatenate([events.device, np.zeros(n, dtype=np.int64)]),
        queries=events.queries,
        n_sessions=events.n_sessions + n_bots,
    )
    mask = np.r_[np.zeros(len(events), dtype=bool), np.ones(n, dtype=bool)]
    return ext, mask


def bot_user_index(day: int) -> int:
    """First user index of the bots of ``day`` (far above any real user)."""
    return 9_000_000 + day * 1_000


def render_events(
    events: DayEvents,
    is_bot: np.ndarray,
    users: Population,
    cat_json: CatalogJson,
    rng: np.random.Generator,
    dirty_rate: float,
) -> Rendered:
    """JSON lines for ``events``; with ``dirty_rate`` > 0 the dirt of constants.EVENT_DIRT_KINDS."""
    n = len(events)
    n_real = int((~is_bot).sum())
    event_ids = _hex_ids(rng, n, 12)
    session_ids = ["s" + h for h in _hex_ids(rng, events.n_sessions, 8)]

    real = ~is_bot
    user = events.user
    uj = np.array(users.id_json + ["null"], dtype=object)
    ipj = np.array(users.ip_json + ["null"], dtype=object)
    emj = np.array(users.email_json + ["null"], dtype=object)
    u_idx = np.where(real, user, len(users))
    user_col = uj[u_idx]
    ip_col = ipj[u_idx]
    email_col = emj[u_idx]
    if is_bot.any():
        user_col[is_bot] = [json.dumps(user_id(int(u))) for u in user[is_bot].tolist()]
        octets = rng.integers(1, 255, (int(is_bot.sum()), 3)).tolist()
        ip_col[is_bot] = [f'"34.{a}.{b}.{c}"' for a, b, c in octets]
    country_u = np.array(COUNTRIES, dtype=object)[users.country]
    country_col = np.where(real, np.r_[country_u, ["US"]][u_idx], "US")

    item_json = np.array(cat_json.id_json + ["null"], dtype=object)
    price_json = np.array(cat_json.price_json + ["null"], dtype=object)
    it_idx = np.where(events.item >= 0, events.item, len(cat_json.id_json))
    item_col = item_json[it_idx]
    price_col = price_json[it_idx]
    query_json = np.array([json.dumps(q) for q in events.queries] + ["null"], dtype=object)
    query_col = query_json[np.where(events.query >= 0, events.query, len(events.queries))]
    max_pos = int(events.position.max(initial=0))
    pos_col = np.array(["null"] + [str(i) for i in range(1, max_pos + 1)], dtype=object)[events.position]
    qty_col = np.array(["null", "1", "2", "3"], dtype=object)[events.quantity]
    type_col = np.array(EVENT_TYPES, dtype=object)[events.etype]
    device_col = np.array(DEVICES, dtype=object)[events.device]
    sess_col = np.array(session_ids, dtype=object)[events.session]

    ts = events.ts.copy()
    offset = np.zeros(n, dtype=np.int64)
    dirt = {k: 0 for k in K.EVENT_DIRT_KINDS}
    dirt[K.BOT_KIND] = int(is_bot.sum())
    picks: dict[str, np.ndarray] = {k: np.zeros(0, dtype=np.int64) for k in K.EVENT_DIRT_KINDS}
    if dirty_rate > 0:
        taken = is_bot.copy()
        has_item = events.item >= 0
        for kind in K.EVENT_DIRT_KINDS:
            eligible = ~taken & (has_item if kind in ("unknown_item_id", "negative_price") else True)
            pool = np.flatnonzero(eligible)
            count = min(int(rng.binomial(n_real, dirty_rate)), len(pool))
            chosen = np.sort(rng.choice(pool, size=count, replace=False))
            taken[chosen] = True
            picks[kind] = chosen
            dirt[kind] = count
        p = picks["unknown_item_id"]
        item_col[p] = [f'"P{UNKNOWN_ITEM_BASE + x:07d}"' for x in rng.integers(0, 999_999, len(p)).tolist()]
        p = picks["negative_price"]
        price_col[p] = ["-" + s for s in price_col[p].tolist()]
        p = picks["missing_user_id"]
        user_col[p] = "null"
        p = picks["other_utc_offset"]
        offset[p] = np.array(OTHER_OFFSETS_MINUTES)[rng.integers(0, len(OTHER_OFFSETS_MINUTES), len(p))]
        p = picks["out_of_window_time"]
        # At least two days away, so no lateness tolerance (hours) can take them back in.
        shift = 2 * 86_400 + rng.integers(0, 28 * 86_400, len(p))
        ts[p] += np.where(rng.random(len(p)) < 0.6, shift, -shift)

    times = _iso(ts)
    if len(picks["other_utc_offset"]):
        p = picks["other_utc_offset"]
        for j, t in zip(p.tolist(), _iso(ts[p], offset[p]), strict=True):
            times[j] = t

    lines = [
        _FMT % row
        for row in zip(
            event_ids, times, user_col.tolist(), sess_col.tolist(), type_col.tolist(),
            item_col.tolist(), query_col.tolist(), pos_col.tolist(), price_col.tolist(),
            qty_col.tolist(), device_col.tolist(), country_col.tolist(), ip_col.tolist(),
            email_col.tolist(), strict=True,
        )
    ]
    if dirty_rate <= 0:
        return Rendered(lines, dirt)

    # Half of the missing user ids drop the key altogether instead of sending null.
    for j in picks["missing_user_id"][::2].tolist():
        lines[j] = lines[j].replace('"user_id":null,', "", 1)
    for j in picks["extra_pii_fields"].tolist():
        lines[j] = lines[j][:-1] + _EXTRA_PII
    cut = rng.uniform(0.2, 0.9, len(picks["malformed_json"]))
    for j, c in zip(picks["malformed_json"].tolist(), cut.tolist(), strict=True):
        lines[j] = lines[j][: int(len(lines[j]) * c)]
    # Re-sent duplicates arrive up to two minutes after the original line.
    dup = picks["duplicate_event_id"]
    arrival = np.r_[events.ts, events.ts[dup] + rng.integers(1, 120, len(dup))]
    src = np.r_[np.arange(n), dup]
    order = np.argsort(arrival, kind="stable")
    return Rendered([lines[j] for j in src[order].tolist()], dirt)
