"""``generate``: the whole synthetic lake for a date range (events, catalog, truth sidecar)."""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ecrec_lib.generator import constants as K
from ecrec_lib.generator.catalog import DAY, build_catalog, encode_catalog, snapshot_lines
from ecrec_lib.generator.population import build_population
from ecrec_lib.generator.render import add_bots, render_events
from ecrec_lib.generator.sessions import expected_events_per_session, simulate_day
from ecrec_lib.generator.vocab import CATEGORIES
from ecrec_lib.generator.writer import write_jsonl_partition
from ecrec_lib.lake import Lake, parse_ds
from ecrec_lib.schema import EVENT_TYPES

TRUTH_DIR = "raw/_truth"  # generator-only sidecar; pipelines never read it
_PRICE_TIERS = ("low", "mid", "high")
# Independent random streams, so e.g. adding dirt never changes the clean events.
_STREAM_CATALOG, _STREAM_USERS, _STREAM_DAY, _STREAM_DIRT, _STREAM_STOCK, _STREAM_DRIFT = range(6)


@dataclass
class DaySummary:
    ds: str
    sessions: int
    events_by_type: dict[str, int]  # generated (pre-dirt) events, bots excluded
    lines_written: int  # raw event lines, dirt included
    dirt: dict[str, int]
    new_users: int
    new_items: int
    active_users: int
    catalog_items: int
    catalog_dirt: dict[str, int]
    event_files: list[str] = field(default_factory=list)
    catalog_files: list[str] = field(default_factory=list)

    @property
    def events(self) -> int:
        return sum(self.events_by_type.values())


@dataclass
class GenerationSummary:
    lake_root: str
    start: str
    days: int
    users: int
    items: int
    seed: int
    dirty_rate: float
    per_day: list[DaySummary]
    truth_path: str

    @property
    def total_events(self) -> int:
        return sum(d.events for d in self.per_day)

    @property
    def total_lines(self) -> int:
        return sum(d.lines_written for d in self.per_day)

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        """A short human-readable table: events by type, dirt, newcomers per day."""
        head = f"{'ds':<10} {'sessions':>8} " + " ".join(f"{t:>11}" for t in EVENT_TYPES)
        head += f" {'lines':>9} {'new_users':>9} {'new_items':>9} {'catalog':>8}"
        rows = [head]
        for d in self.per_day:
            rows.append(
                f"{d.ds:<10} {d.sessions:>8} "
                + " ".join(f"{d.events_by_type[t]:>11}" for t in EVENT_TYPES)
                + f" {d.lines_written:>9} {d.new_users:>9} {d.new_items:>9} {d.catalog_items:>8}"
            )
        if self.dirty_rate > 0:
            dirt: dict[str, int] = {}
            cdirt: dict[str, int] = {}
            for d in self.per_day:
                for k, v in d.dirt.items():
                    dirt[k] = dirt.get(k, 0) + v
                for k, v in d.catalog_dirt.items():
                    cdirt[k] = cdirt.get(k, 0) + v
            rows.append("event dirt: " + ", ".join(f"{k}={v}" for k, v in dirt.items()))
            rows.append("catalog dirt: " + ", ".join(f"{k}={v}" for k, v in cdirt.items()))
        rows.append(
            f"total: {self.total_events} events, {self.total_lines} lines in {self.lake_root}/raw; "
            f"truth sidecar {self.truth_path}"
        )
        return "\n".join(rows)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def generate(
    lake_root: str,
    start: str,
    days: int,
    users: int,
    items: int,
    seed: int,
    dirty_rate: float = 0.0,
    events_per_day: int | None = None,
) -> GenerationSummary:
    """Write ``days`` daily raw partitions (events + catalog snapshot) starting at ``start``.

    Same arguments, same bytes. ``events_per_day`` sets the session count so the day holds
    about that many generated events (dirt and bots come on top).
    """
    start_date = parse_ds(start)
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    if not 0.0 <= dirty_rate < 0.1:
        raise ValueError(f"dirty_rate must be in [0, 0.1), got {dirty_rate}")
    if events_per_day is not None and events_per_day < 1:
        raise ValueError(f"events_per_day must be positive, got {events_per_day}")
    lake = Lake(lake_root)
    start_ts = int(dt.datetime(start_date.year, start_date.month, start_date.day,
                               tzinfo=dt.UTC).timestamp())
    catalog = build_catalog(_rng(seed, _STREAM_CATALOG), items, days, start_ts)
    cat_json = encode_catalog(catalog)
    pop = build_population(_rng(seed, _STREAM_USERS), users, days, catalog.category_weights)
    n_sessions = (
        None if events_per_day is None
        else max(1, int(round(events_per_day / expected_events_per_session())))
    )

    per_day = []
    for day in range(days):
        ds = (start_date + dt.timedelta(days=day)).isoformat()
        day_ts = start_ts + day * DAY
        if day > 0:
            pop.drift(_rng(seed, _STREAM_DRIFT, day), catalog.category_weights)
        stock_rng = _rng(seed, _STREAM_STOCK, day)
        in_stock = stock_rng.random(len(catalog)) >= K.OUT_OF_STOCK_RATE
        events = simulate_day(
            _rng(seed, _STREAM_DAY, day), catalog, pop, day, day_ts, in_stock, n_sessions
        )
        counts = np.bincount(events.etype, minlength=len(EVENT_TYPES))
        dirt_rng = _rng(seed, _STREAM_DIRT, day)
        is_bot = np.zeros(len(events), dtype=bool)
        if dirty_rate > 0:
            n_bot = max(K.BOT_MIN_EVENTS, int(dirt_rng.binomial(len(events), dirty_rate)))
            live = np.flatnonzero(catalog.created_day < day)
            events, is_bot = add_bots(events, dirt_rng, live, day, day_ts, n_bot)
        rendered = render_events(events, is_bot, pop, cat_json, dirt_rng, dirty_rate)
        event_files = write_jsonl_partition(lake.raw("events", ds), rendered.lines)
        cat_lines, cat_dirt = snapshot_lines(catalog, cat_json, day, in_stock, dirt_rng, dirty_rate)
        catalog_files = write_jsonl_partition(lake.raw("catalog", ds), cat_lines)
        real = ~is_bot
        per_day.append(DaySummary(
            ds=ds,
            sessions=events.n_sessions - (0 if not is_bot.any() else len(np.unique(events.session[is_bot]))),
            events_by_type={t: int(c) for t, c in zip(EVENT_TYPES, counts.tolist(), strict=True)},
            lines_written=len(rendered.lines),
            dirt=rendered.dirt,
            new_users=int((pop.first_day == day).sum()),
            new_items=int((catalog.created_day == day).sum()),
            active_users=int(len(np.unique(events.user[real]))),
            catalog_items=int((catalog.created_day <= day).sum()),
            catalog_dirt=cat_dirt,
            event_files=event_files,
            catalog_files=catalog_files,
        ))

    truth_path = _write_truth(lake, pop, catalog, start_date, days, seed)
    return GenerationSummary(
        lake_root=lake.root, start=start, days=days, users=users, items=items, seed=seed,
        dirty_rate=dirty_rate, per_day=per_day, truth_path=truth_path,
    )


def _write_truth(lake: Lake, pop, catalog, start_date: dt.date, days: int, seed: int) -> str:
    """raw/_truth/user_prefs.parquet: the planted preferences, to test that models recover them."""
    out_dir = lake.dataset("raw", "_truth")
    os.makedirs(out_dir, exist_ok=True)
    names = [c.name for c in CATEGORIES]
    fav = pop.favorites
    preferred = [[names[c] for c in row if c >= 0] for row in fav.tolist()]
    brands = [
        [CATEGORIES[c].brands[int(pop.pref_brand[u, c])] for c in row if c >= 0]
        for u, row in enumerate(fav.tolist())
    ]
    first_ds = [
        None if d < 0 else (start_date + dt.timedelta(days=int(d))).isoformat()
        for d in pop.first_day.tolist()
    ]
    table = pa.table({
        "user_id": pa.array(pop.ids, pa.string()),
        "first_ds": pa.array(first_ds, pa.string()),
        "preferred_categories": pa.array(preferred, pa.list_(pa.string())),
        "preferred_brands": pa.array(brands, pa.list_(pa.string())),
        "price_tier": pa.array([_PRICE_TIERS[t] for t in pop.price_tier.tolist()], pa.string()),
        "top_category_last_day": pa.array(
            [names[c] for c in pop.cat_weights.argmax(axis=1).tolist()], pa.string()
        ),
        "category_weights_last_day": pa.FixedSizeListArray.from_arrays(
            pa.array(np.round(pop.cat_weights, 6).ravel()), len(names)
        ),
    })
    path = os.path.join(out_dir, "user_prefs.parquet")
    pq.write_table(table, path)
    meta = {
        "seed": seed,
        "start": start_date.isoformat(),
        "days": days,
        "categories": names,  # order of category_weights_last_day
        "n_users": len(pop),
        "n_items": len(catalog),
        "note": "generator-only sidecar: pipelines must not read raw/_truth",
    }
    with open(os.path.join(out_dir, "generator.json"), "w") as fh:
        json.dump(meta, fh, indent=2, sort_keys=True)
    return path
