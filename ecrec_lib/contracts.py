"""Raw-contract validator: does a raw JSON-lines file / partition match docs/data_contracts.md?

Pure Python (no Spark): it reads every line, checks it against ``schema.RAW_EVENT_FIELDS``
or ``schema.RAW_CATALOG_FIELDS`` and counts lines per problem. Problem names are the
quarantine reasons of ``ecrec_lib.schema`` where one exists, so a report predicts what the
clean stage will quarantine. ``notes`` count things that are valid but worth knowing
(timestamps in a non-UTC offset). ``bot_traffic`` counts every line of a user with more
than ``bot_max_events_per_minute`` events in some UTC minute, as the clean stage does.

    python -m ecrec_lib.contracts --lake ./lake --kind events --ds 2024-01-01
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import gzip
import json
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ecrec_lib.lake import Lake, parse_ds
from ecrec_lib.schema import (
    EVENT_TYPES,
    ITEM_EVENT_TYPES,
    RAW_CATALOG_FIELDS,
    RAW_CATALOG_REQUIRED,
    RAW_EVENT_FIELDS,
    RAW_EVENT_REQUIRED,
    REASON_BAD_EVENT_TYPE,
    REASON_BAD_PRICE,
    REASON_BAD_QUANTITY,
    REASON_BAD_TIME,
    REASON_BAD_TIMESTAMP,
    REASON_BOT,
    REASON_DUPLICATE_ITEM,
    REASON_INVALID_UTF8,
    REASON_MALFORMED,
    REASON_MISSING_REQUIRED,
    REASON_MISSING_TITLE,
    REASON_MISSING_USER,
    REASON_NEGATIVE_PRICE,
    REASON_OUT_OF_WINDOW,
    REASON_TOO_LONG,
    REASON_UNKNOWN_ITEM,
    REASON_WRONG_TYPE,
)

KINDS = ("events", "catalog")
DUPLICATE_EVENT_ID = "duplicate_event_id"  # a later line repeats an earlier event_id
UNEXPECTED_FIELD = "unexpected_field"  # a key the contract does not list (often PII)
WRONG_TYPE = REASON_WRONG_TYPE  # reported as wrong_type:<field>; clean files it as wrong_type
NOTE_NON_UTC = "non_utc_offset"  # valid: the clean stage normalizes to UTC
NOTE_CATALOG_ABSENT = "catalog_absent_item_check_skipped"
PART_PATTERNS = ("*.json.gz", "*.jsonl.gz", "*.json", "*.jsonl")

_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")
# A date or date-time without offset: well formed, but it cannot be placed in UTC
# (bad_timestamp; reading it as UTC would shift events by the sender's offset).
_ISO_NAIVE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?$")

# Size limits (field_too_long). A line is measured in UTF-8 bytes, a field in characters.
# Real events are a few hundred bytes; the limits only stop what no tracker sends (a 200,000
# character "query" is a bug or an attack, and would be cached, shuffled and embedded).
MAX_LINE_BYTES: dict[str, int] = {"events": 16_384, "catalog": 131_072}
MAX_FIELD_CHARS: dict[str, dict[str, int]] = {
    "events": {
        "event_id": 128, "event_time": 64, "user_id": 256, "session_id": 128, "event_type": 64,
        "item_id": 256, "query": 1_000, "device": 64, "country": 64, "ip": 64, "email": 320,
    },
    "catalog": {
        "item_id": 256, "title": 1_000, "description": 65_536, "category_path": 1_000,
        "brand": 256, "created_at": 64,
    },
}
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}
_MAX_EXAMPLES = 3


@dataclass
class ContractReport:
    """Line counts of one file or partition against the raw contract."""

    kind: str
    paths: list[str] = field(default_factory=list)
    lines: int = 0
    conforming: int = 0
    problems: Counter = field(default_factory=Counter)  # problem -> lines having it
    notes: Counter = field(default_factory=Counter)  # valid-but-noteworthy -> lines
    examples: dict[str, list[str]] = field(default_factory=dict)  # problem -> "file:line"

    @property
    def non_conforming(self) -> int:
        return self.lines - self.conforming

    @property
    def ok(self) -> bool:
        return self.lines == self.conforming

    def to_dict(self) -> dict:
        return {
            "kind": self.kind, "paths": self.paths, "lines": self.lines,
            "conforming": self.conforming, "non_conforming": self.non_conforming,
            "problems": dict(sorted(self.problems.items())), "notes": dict(sorted(self.notes.items())),
            "examples": self.examples,
        }

    def format(self) -> str:
        out = [f"{self.kind}: {self.lines} lines, {self.conforming} conforming, "
               f"{self.non_conforming} not ({len(self.paths)} file(s))"]
        for name, n in sorted(self.problems.items()):
            where = ", ".join(self.examples.get(name, []))
            out.append(f"  problem {name}: {n} line(s)" + (f" e.g. {where}" if where else ""))
        for name, n in sorted(self.notes.items()):
            out.append(f"  note {name}: {n}")
        return "\n".join(out)


def is_naive_timestamp(value: object) -> bool:
    """A well-formed ISO-8601 date or date-time *without* offset (contract: invalid)."""
    return isinstance(value, str) and _ISO_NAIVE.match(value) is not None


def too_long_fields(rec: dict, kind: str) -> list[str]:
    """The string fields of ``rec`` longer than their :data:`MAX_FIELD_CHARS` limit."""
    limits = MAX_FIELD_CHARS[kind]
    return [n for n, v in rec.items() if isinstance(v, str) and n in limits and len(v) > limits[n]]


def parse_event_time(value: object) -> dt.datetime | None:
    """An ISO-8601 timestamp *with* UTC offset (``Z`` or ``+HH:MM``), else None."""
    if not isinstance(value, str) or not _ISO.match(value):
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


def _type_ok(value: object, json_type: str) -> bool:
    if isinstance(value, bool) and json_type != "boolean":
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, _JSON_TYPES[json_type])


def _missing(rec: dict, name: str) -> bool:
    value = rec.get(name)
    return value is None or (isinstance(value, str) and value.strip() == "")


def check_event(rec: object) -> tuple[list[str], list[str]]:
    """Problems and notes of one parsed event line (stateless checks only)."""
    if not isinstance(rec, dict):
        return [REASON_MALFORMED], []
    problems: list[str] = []
    notes: list[str] = []
    if _missing(rec, "user_id"):
        problems.append(REASON_MISSING_USER)
    if any(_missing(rec, f) for f in RAW_EVENT_REQUIRED if f != "user_id"):
        problems.append(REASON_MISSING_REQUIRED)
    for name, value in rec.items():
        if name not in RAW_EVENT_FIELDS:
            problems.append(UNEXPECTED_FIELD)
        elif value is not None and not _type_ok(value, RAW_EVENT_FIELDS[name]):
            problems.append(f"{WRONG_TYPE}:{name}")
    if too_long_fields(rec, "events"):
        problems.append(REASON_TOO_LONG)
    etype = rec.get("event_type")
    if etype is not None and etype not in EVENT_TYPES:
        problems.append(REASON_BAD_EVENT_TYPE)
    if etype in ITEM_EVENT_TYPES and _missing(rec, "item_id"):
        problems.append(REASON_MISSING_REQUIRED)
    if etype == "search" and _missing(rec, "query"):
        problems.append(REASON_MISSING_REQUIRED)
    if rec.get("event_time") is not None:
        ts = parse_event_time(rec["event_time"])
        if ts is None:
            problems.append(REASON_BAD_TIMESTAMP if is_naive_timestamp(rec["event_time"])
                            else REASON_BAD_TIME)
        elif ts.utcoffset() != dt.timedelta(0):
            notes.append(NOTE_NON_UTC)
    price = rec.get("price")
    if _type_ok(price, "number") and price < 0:
        problems.append(REASON_NEGATIVE_PRICE)
    qty = rec.get("quantity")
    if _type_ok(qty, "integer") and qty <= 0:
        problems.append(REASON_BAD_QUANTITY)
    return sorted(set(problems)), notes


def check_catalog_row(rec: object) -> list[str]:
    """Problems of one parsed catalog line (stateless checks only)."""
    if not isinstance(rec, dict):
        return [REASON_MALFORMED]
    problems: list[str] = []
    if _missing(rec, "title"):
        problems.append(REASON_MISSING_TITLE)
    if any(_missing(rec, f) for f in RAW_CATALOG_REQUIRED if f != "title"):
        problems.append(REASON_MISSING_REQUIRED)
    # A null price is allowed (sources without prices); a negative or non-numeric one is not.
    for name, value in rec.items():
        if name not in RAW_CATALOG_FIELDS:
            problems.append(UNEXPECTED_FIELD)
        elif value is not None and not _type_ok(value, RAW_CATALOG_FIELDS[name]):
            problems.append(f"{WRONG_TYPE}:{name}")
    if too_long_fields(rec, "catalog"):
        problems.append(REASON_TOO_LONG)
    price = rec.get("price")
    if _type_ok(price, "number") and price < 0:
        problems.append(REASON_BAD_PRICE)
    if rec.get("created_at") is not None and parse_event_time(rec["created_at"]) is None:
        problems.append(REASON_BAD_TIMESTAMP if is_naive_timestamp(rec["created_at"])
                        else REASON_BAD_TIME)
    return sorted(set(problems))


def _read_lines(path: str, kind: str) -> Iterator[tuple[int, str, list[str]]]:
    """(line number, text, line-level problems) of every non-blank line. The bytes are decoded
    strictly: a line that is not UTF-8 is reported (``invalid_utf8``), never silently decoded
    with U+FFFD, which could merge two ids; an over-long line is ``field_too_long``."""
    opener = gzip.open if path.endswith(".gz") else open
    limit = MAX_LINE_BYTES[kind]
    with opener(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            raw = raw.rstrip(b"\n")
            if not raw.strip():
                continue
            problems = [REASON_TOO_LONG] if len(raw) > limit else []
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                line = raw.decode("utf-8", errors="replace")
                problems.append(REASON_INVALID_UTF8)
            yield n, line, problems


def _loads(line: str) -> object:
    try:
        return json.loads(line)
    except ValueError:
        return None


def _validate(
    kind: str,
    paths: Iterable[str],
    ds: str | None,
    known_items: set[str] | None,
    late_tolerance_hours: float,
    bot_max_events_per_minute: int,
) -> ContractReport:
    report = ContractReport(kind=kind)
    seen: dict[str, str] = {}  # event_id / item_id -> first line's text (catalog: content)
    window = None
    if ds is not None:
        day = dt.datetime.combine(parse_ds(ds), dt.time(), tzinfo=dt.UTC)
        tol = dt.timedelta(hours=late_tolerance_hours)
        window = (day - tol, day + dt.timedelta(days=1) + tol)
    per_minute: Counter = Counter()  # (user_id, minute) -> events
    user_lines: Counter = Counter()  # user -> lines
    user_ok_lines: Counter = Counter()  # user -> lines without any other problem
    for path in paths:
        report.paths.append(path)
        name = os.path.basename(path)
        for n, line, line_problems in _read_lines(path, kind):
            report.lines += 1
            rec = _loads(line)
            if kind == "events":
                problems, notes = check_event(rec)
            else:
                problems, notes = check_catalog_row(rec), []
            problems = sorted({*problems, *line_problems})
            if isinstance(rec, dict):
                key = rec.get("event_id" if kind == "events" else "item_id")
                if isinstance(key, str):
                    if key in seen:
                        if kind == "events":
                            problems.append(DUPLICATE_EVENT_ID)
                        elif seen[key] != line:
                            problems.append(REASON_DUPLICATE_ITEM)
                    else:
                        seen[key] = line
                if kind == "events":
                    ts = parse_event_time(rec.get("event_time"))
                    if ts is not None and window and not window[0] <= ts < window[1]:
                        problems.append(REASON_OUT_OF_WINDOW)
                    item = rec.get("item_id")
                    if known_items is not None and isinstance(item, str) and item not in known_items:
                        problems.append(REASON_UNKNOWN_ITEM)
                    user = rec.get("user_id")
                    if isinstance(user, str):
                        user_lines[user] += 1
                        user_ok_lines[user] += not problems
                        if ts is not None:
                            per_minute[(user, int(ts.timestamp()) // 60)] += 1
            for p in problems:
                report.problems[p] += 1
                ex = report.examples.setdefault(p, [])
                if len(ex) < _MAX_EXAMPLES:
                    ex.append(f"{name}:{n}")
            for note in notes:
                report.notes[note] += 1
            if not problems:
                report.conforming += 1
    if kind == "events":
        bots = sorted({u for (u, _), c in per_minute.items() if c > bot_max_events_per_minute})
        if bots:
            report.problems[REASON_BOT] = sum(user_lines[u] for u in bots)
            report.conforming -= sum(user_ok_lines[u] for u in bots)
            report.examples[REASON_BOT] = [f"user_id {u}" for u in bots[:_MAX_EXAMPLES]]
    return report


def validate_raw_events_file(
    path: str,
    ds: str | None = None,
    known_items: set[str] | None = None,
    late_tolerance_hours: float = 6.0,
    bot_max_events_per_minute: int = 60,
) -> ContractReport:
    """Check one raw events file; ``ds`` adds the time-window check, ``known_items`` the
    catalog check."""
    _require_file(path)
    return _validate("events", [path], ds, known_items, late_tolerance_hours, bot_max_events_per_minute)


def validate_raw_catalog_file(path: str) -> ContractReport:
    _require_file(path)
    return _validate("catalog", [path], None, None, 0.0, 0)


def partition_files(lake_root: str, kind: str, ds: str) -> list[str]:
    """The data files of raw/<kind>/ds=<ds>, sorted; a clear error when there are none."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    path = Lake(lake_root).raw(kind, ds)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"raw partition {path} does not exist; land data first (jobs.generate_events or "
            "jobs.ingest_amazon) or check --lake/--ds"
        )
    files = sorted({f for pat in PART_PATTERNS for f in glob.glob(os.path.join(path, pat))})
    if not files:
        raise FileNotFoundError(f"raw partition {path} holds no part-*.json.gz files")
    return files


def catalog_item_ids(lake_root: str, ds: str) -> set[str] | None:
    """Item ids of the raw catalog snapshot of ``ds``, or None when there is no snapshot."""
    try:
        files = partition_files(lake_root, "catalog", ds)
    except FileNotFoundError:
        return None
    ids: set[str] = set()
    for path in files:
        for _, line, _problems in _read_lines(path, "catalog"):
            rec = _loads(line)
            if isinstance(rec, dict) and isinstance(rec.get("item_id"), str):
                ids.add(rec["item_id"])
    return ids


def validate_raw_partition(
    lake_root: str,
    kind: str,
    ds: str,
    check_items: bool = True,
    late_tolerance_hours: float = 6.0,
    bot_max_events_per_minute: int = 60,
) -> ContractReport:
    """Check every file of raw/<kind>/ds=<ds> (duplicates are found across files).

    Events are also checked against the ds window and, when ``check_items`` and a catalog
    snapshot exists for the same ds, against the catalog's item ids.
    """
    files = partition_files(lake_root, kind, ds)
    if kind == "catalog":
        return _validate("catalog", files, None, None, 0.0, 0)
    known = catalog_item_ids(lake_root, ds) if check_items else None
    report = _validate("events", files, ds, known, late_tolerance_hours, bot_max_events_per_minute)
    if check_items and known is None:
        report.notes[NOTE_CATALOG_ABSENT] = 1
    return report


def _require_file(path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist; pass a raw part file (part-*.json.gz)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Validate a raw lake partition against the contract.")
    parser.add_argument("--lake", required=True, help="lake root directory")
    parser.add_argument("--kind", choices=KINDS, default="events", help="events or catalog")
    parser.add_argument("--ds", required=True, help="partition date, YYYY-MM-DD")
    parser.add_argument("--late-tolerance-hours", type=float, default=6.0,
                        help="events this far outside the ds day still count as inside")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        report = validate_raw_partition(args.lake, args.kind, args.ds,
                                        late_tolerance_hours=args.late_tolerance_hours)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
