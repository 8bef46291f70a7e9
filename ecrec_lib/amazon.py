"""Land the real Amazon Beauty 5-core data in the raw lake contract (docs/data_contracts.md).

Mapping (one review = one purchase):
  * event_time = UTC midnight of the review day + k seconds, k = rank of ``seq_pos`` among
    the user's reviews of that day (0, 1, 2 ...): the within-day order survives, and every
    event stays inside its day.
  * event_id / session_id = HMAC-SHA256 with the pseudonymization key of (user, item,
    seq_pos) / (user, day): deterministic for a key, and not linkable to the public reviewer
    id without it (an unkeyed hash is: anyone can hash every reviewer id and compare).
  * price, query, position, device, country, ip, email: null; quantity 1.
  * catalog: category_path = "Beauty > " + categories with "|" -> " > "; description "";
    price null; in_stock true; created_at = the item's first review day (items never
    reviewed here: the first day of the data); empty title / brand -> null.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ecrec_lib.config import resolve_pseudonymization_key
from ecrec_lib.generator.writer import write_jsonl_partition
from ecrec_lib.lake import Lake
from ecrec_lib.schema import CATEGORY_SEP

INTERACTIONS_FILE = "interactions.csv"
ITEMS_FILE = "items.csv"
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "seq_pos")
ITEM_COLUMNS = ("item_id", "title", "brand", "categories")
ROOT_CATEGORY = "Beauty"
DS_MODES = ("daily", "single")
DAY = 86_400


class SourceDataError(ValueError):
    """The source directory or one of its CSV files is unusable; the message says how to fix it."""


@dataclass
class IngestSummary:
    events: int
    users: int
    items_in_events: int
    catalog_items: int
    event_partitions: list[str] = field(default_factory=list)  # ds values written
    catalog_partitions: list[str] = field(default_factory=list)
    first_day: str = ""
    last_day: str = ""
    empty_titles: int = 0
    late_tolerance_hours_needed: float = 0.0  # for the single mode: see docs

    def format(self) -> str:
        parts = [
            f"{self.events} purchase events from {self.users} users on {self.items_in_events} items "
            f"({self.first_day} .. {self.last_day})",
            f"event partitions: {len(self.event_partitions)} "
            f"({self.event_partitions[0]} .. {self.event_partitions[-1]})",
            f"catalog: {self.catalog_items} items in {len(self.catalog_partitions)} partition(s) "
            f"{', '.join(self.catalog_partitions[:3])}{' ...' if len(self.catalog_partitions) > 3 else ''}",
        ]
        if self.empty_titles:
            parts.append(f"{self.empty_titles} items have no title (landed as null; the clean stage "
                         "quarantines them as missing_title)")
        if self.late_tolerance_hours_needed > 0:
            parts.append(
                "single mode: events span many days; clean this ds with "
                f"ECREC_LATE_TOLERANCE_HOURS={self.late_tolerance_hours_needed:.0f} (or more) so "
                "they are not quarantined as outside_ds_window"
            )
        return "\n".join(parts)


def _require_dir(src: str) -> None:
    if not os.path.isdir(src):
        raise SourceDataError(
            f"source directory {src} does not exist; pass --src pointing at the Amazon Beauty "
            f"folder holding {INTERACTIONS_FILE} and {ITEMS_FILE} (e.g. ../shared/data/amazon_beauty)"
        )


def _read_csv(src: str, name: str, columns: tuple[str, ...], dtypes: dict[str, str]) -> pd.DataFrame:
    path = os.path.join(src, name)
    if not os.path.isfile(path):
        raise SourceDataError(
            f"{path} is missing; the source folder must hold {name} with header {','.join(columns)}"
        )
    try:
        header = pd.read_csv(path, nrows=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SourceDataError(f"{path} is not a readable CSV file ({exc}); expected header "
                              f"{','.join(columns)}") from None
    missing = [c for c in columns if c not in header.columns]
    if missing:
        raise SourceDataError(
            f"{path} lacks column(s) {missing} (found {list(header.columns)}); the first line must "
            f"be the header {','.join(columns)}"
        )
    try:
        df = pd.read_csv(path, usecols=list(columns), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise SourceDataError(f"{path} is malformed ({exc}); fix or re-export the file") from None
    for col, kind in dtypes.items():
        if kind == "int":
            num = pd.to_numeric(df[col], errors="coerce")
            bad = num.isna() | (num != np.floor(num))
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise SourceDataError(
                    f"{path} line {row + 2}: column {col} must be an integer, got {df[col].iloc[row]!r}"
                )
            df[col] = num.astype(np.int64)
    return df


def read_interactions(src: str) -> pd.DataFrame:
    """interactions.csv as user_id, item_id (str), timestamp, seq_pos (int64)."""
    _require_dir(src)
    df = _read_csv(src, INTERACTIONS_FILE, INTERACTION_COLUMNS, {"timestamp": "int", "seq_pos": "int"})
    blank = (df["user_id"].str.strip() == "") | (df["item_id"].str.strip() == "")
    if blank.any():
        row = int(np.flatnonzero(blank.to_numpy())[0])
        raise SourceDataError(
            f"{os.path.join(src, INTERACTIONS_FILE)} line {row + 2}: empty user_id or item_id"
        )
    if df.empty:
        raise SourceDataError(f"{os.path.join(src, INTERACTIONS_FILE)} has no rows")
    return df


def read_items(src: str) -> pd.DataFrame:
    """items.csv as strings (empty cells are empty strings)."""
    _require_dir(src)
    return _read_csv(src, ITEMS_FILE, ITEM_COLUMNS, {})


def _keyed(key: bytes, kind: str, values: pd.Series, n: int) -> list[str]:
    """``"az"`` + the first ``n`` hex digits of HMAC-SHA256(key, kind + 0x1f + value)."""
    prefix = kind.encode("utf-8") + b"\x1f"
    return ["az" + hmac.new(key, prefix + v.encode("utf-8"), hashlib.sha256).hexdigest()[:n]
            for v in values.tolist()]


def _ds_of(day_ts: np.ndarray) -> np.ndarray:
    return np.datetime_as_string(day_ts.astype("datetime64[s]"), unit="D")


def event_frame(interactions: pd.DataFrame, key: bytes) -> pd.DataFrame:
    """One row per review with the raw event fields (plus ``ds``), sorted by event_time;
    ``key`` (the pseudonymization key) keys the event and session ids."""
    if len(key) < 16:
        raise ValueError("the pseudonymization key must be at least 16 bytes")
    df = interactions.copy()
    df["day_ts"] = (df["timestamp"] // DAY) * DAY
    df = df.sort_values(["user_id", "day_ts", "seq_pos"], kind="stable")
    k = df.groupby(["user_id", "day_ts"], sort=False).cumcount().to_numpy()
    df["ts"] = df["day_ts"].to_numpy() + k
    df["ds"] = _ds_of(df["day_ts"].to_numpy())
    df["event_id"] = _keyed(key, "event", df["user_id"] + "\x1f" + df["item_id"] + "\x1f"
                            + df["seq_pos"].astype(str), 24)
    df["session_id"] = _keyed(key, "session", df["user_id"] + "\x1f" + df["ds"], 16)
    text = np.datetime_as_string(df["ts"].to_numpy().astype("datetime64[s]"), unit="s")
    df["event_time"] = [t + "+00:00" for t in text.tolist()]
    return df.sort_values(["ts", "event_id"], kind="stable").reset_index(drop=True)


def event_lines(events: pd.DataFrame) -> list[str]:
    return [
        f'{{"event_id":"{e}","event_time":"{t}","user_id":{json.dumps(u)},"session_id":"{s}",'
        f'"event_type":"purchase","item_id":{json.dumps(i)},"query":null,"position":null,'
        f'"price":null,"quantity":1,"device":null,"country":null,"ip":null,"email":null}}'
        for e, t, u, s, i in zip(
            events["event_id"].tolist(), events["event_time"].tolist(), events["user_id"].tolist(),
            events["session_id"].tolist(), events["item_id"].tolist(), strict=True,
        )
    ]


def category_path(categories: str) -> str:
    levels = [c.strip() for c in categories.split("|") if c.strip()]
    return CATEGORY_SEP.join([ROOT_CATEGORY, *levels])


def catalog_lines(items: pd.DataFrame, events: pd.DataFrame) -> list[str]:
    """Catalog rows sorted by item_id; created_at = the item's first review day."""
    first = events.groupby("item_id")["day_ts"].min()
    default_day = int(events["day_ts"].min())
    day_ts = items["item_id"].map(first).fillna(default_day).astype(np.int64).to_numpy()
    created = [t + "+00:00" for t in np.datetime_as_string(day_ts.astype("datetime64[s]"), unit="s").tolist()]
    order = np.argsort(items["item_id"].to_numpy(), kind="stable").tolist()
    ids, titles = items["item_id"].tolist(), items["title"].str.strip().tolist()
    brands, cats = items["brand"].str.strip().tolist(), items["categories"].tolist()
    return [
        f'{{"item_id":{json.dumps(ids[j])},"title":{json.dumps(titles[j]) if titles[j] else "null"},'
        f'"description":"","category_path":{json.dumps(category_path(cats[j]))},'
        f'"brand":{json.dumps(brands[j]) if brands[j] else "null"},"price":null,"in_stock":true,'
        f'"created_at":"{created[j]}"}}'
        for j in order
    ]


def ingest(
    src: str,
    lake_root: str,
    ds_mode: str = "daily",
    ds: str | None = None,
    catalog_every_day: bool = False,
    key: bytes | None = None,
) -> IngestSummary:
    """Write raw/events and raw/catalog partitions for the Amazon Beauty files in ``src``.

    ``key`` keys the event and session ids (default: the pseudonymization key, resolved like
    the clean stage does: ``ECREC_PSEUDO_KEY`` ...; never logged or written).

    ``daily``: one events partition per review day, the catalog on the last day (and on
    every event day with ``catalog_every_day``). ``single``: all events and the catalog
    under one ds (``ds``, default the last review day).
    """
    if ds_mode not in DS_MODES:
        raise ValueError(f"ds_mode must be one of {DS_MODES}, got {ds_mode!r}")
    if ds is not None and ds_mode != "single":
        raise ValueError("--ds only applies to --ds-mode single")
    if catalog_every_day and ds_mode != "daily":
        raise ValueError("--catalog-every-day only applies to --ds-mode daily")
    interactions = read_interactions(src)
    items = read_items(src)
    unknown = sorted(set(interactions["item_id"]) - set(items["item_id"]))
    if unknown:
        raise SourceDataError(
            f"{len(unknown)} item_id(s) of {INTERACTIONS_FILE} are missing from {ITEMS_FILE} "
            f"(e.g. {unknown[:3]}); use the items.csv that belongs to these interactions"
        )
    events = event_frame(interactions, key if key is not None else resolve_pseudonymization_key())
    lake = Lake(lake_root)
    first_ds, last_ds = str(events["ds"].iloc[0]), str(events["ds"].iloc[-1])
    cat_lines = catalog_lines(items, events)
    summary = IngestSummary(
        events=len(events), users=int(events["user_id"].nunique()),
        items_in_events=int(events["item_id"].nunique()), catalog_items=len(items),
        first_day=first_ds, last_day=last_ds,
        empty_titles=int((items["title"].str.strip() == "").sum()),
    )
    if ds_mode == "single":
        target = ds or last_ds
        write_jsonl_partition(lake.raw("events", target), event_lines(events))
        write_jsonl_partition(lake.raw("catalog", target), cat_lines)
        summary.event_partitions = [target]
        summary.catalog_partitions = [target]
        day0 = dt.date.fromisoformat(target)
        spread = max(abs((dt.date.fromisoformat(d) - day0).days) for d in (first_ds, last_ds))
        summary.late_tolerance_hours_needed = float(spread * 24 + 24) if spread else 0.0
        return summary
    for day, part in events.groupby("ds", sort=True):
        write_jsonl_partition(lake.raw("events", str(day)), event_lines(part))
        summary.event_partitions.append(str(day))
    catalog_days = summary.event_partitions if catalog_every_day else [last_ds]
    for day in catalog_days:
        write_jsonl_partition(lake.raw("catalog", day), cat_lines)
    summary.catalog_partitions = list(catalog_days)
    return summary
