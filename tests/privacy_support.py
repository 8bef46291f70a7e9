"""A scanner for planted personal data: where in a directory tree does any of a set of strings
appear?

Parquet files are read *as values* (their pages are compressed and dictionary-encoded, so a
byte search misses strings that are there), DuckDB files through DuckDB, gzip files
decompressed, everything else as bytes. Matching ignores case (clean data lower-cases queries).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecrec_lib.landing import LANDING_MARKER, manifest_text

PLANTED_USER = "PLANTED-USER-7f3a9"
PLANTED_EMAIL = "planted.person@example.org"
PLANTED_PHONE = "+44 20 7946 0958"
PLANTED_IP = "203.0.113.77"
PLANTED = (PLANTED_USER, PLANTED_EMAIL, PLANTED_PHONE, PLANTED_IP)


@dataclass(frozen=True)
class Hit:
    path: str  # relative to the scanned root
    needle: str
    where: str  # "column <name>", "table <t>.<c>" or "bytes"


def _values(value: Any) -> Iterator[str]:
    """Every leaf of a Parquet/DuckDB value as text (bytes decoded leniently)."""
    if value is None:
        return
    if isinstance(value, bytes):
        yield value.decode("utf-8", errors="replace")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _values(k)
            yield from _values(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _values(v)
    else:
        yield str(value)


def _match(texts: Iterable[str], needles: list[str]) -> set[str]:
    found: set[str] = set()
    for text in texts:
        low = text.lower()
        found.update(n for n in needles if n.lower() in low)
    return found


def _scan_parquet(path: Path, needles: list[str]) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path).read()  # this file only: no partition discovery
    for name in table.column_names:
        for needle in _match(_values(table.column(name).to_pylist()), needles):
            yield needle, f"column {name}"


def _scan_duckdb(path: Path, needles: list[str]) -> Iterator[tuple[str, str]]:
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = con.execute(
            "select table_schema, table_name from information_schema.tables"
        ).fetchall()
        for schema, table in tables:
            cur = con.execute(f'select * from "{schema}"."{table}"')
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
            for i, col in enumerate(cols):
                for needle in _match(_values([r[i] for r in rows]), needles):
                    yield needle, f"table {schema}.{table}.{col}"
    finally:
        con.close()


def _scan_bytes(path: Path, needles: list[str]) -> Iterator[tuple[str, str]]:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    low = data.lower()
    for needle in needles:
        if needle.lower().encode("utf-8") in low:
            yield needle, "bytes"


def _is_duckdb(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(12)[8:12] == b"DUCK"


def scan_tree(root: Path, needles: Iterable[str]) -> list[Hit]:
    """Every (file, needle) where one of ``needles`` occurs under ``root`` (hidden files and
    folders included: a leftover staging folder is a leak too)."""
    needles = list(needles)
    hits: list[Hit] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            found = _scan_parquet(path, needles)
        elif path.suffix in {".duckdb", ".db"} and _is_duckdb(path):
            found = _scan_duckdb(path, needles)
        else:
            found = _scan_bytes(path, needles)
        hits.extend(Hit(str(path.relative_to(root)), n, w) for n, w in found)
    return hits


def hits_outside(hits: list[Hit], allowed_top: tuple[str, ...]) -> list[Hit]:
    """The hits whose first path component is not one of ``allowed_top`` (e.g. raw, quarantine_raw)."""
    return [h for h in hits if Path(h.path).parts[0] not in allowed_top]


def format_hits(hits: list[Hit]) -> str:
    return json.dumps([h.__dict__ for h in hits], indent=1)


def plant_raw_pii(lake: Path, ds: str) -> None:
    """Add a part file of lines carrying :data:`PLANTED` beside the generated ones of raw
    events day ``ds`` (a landing manifest, when the day has one, is rewritten to list it)."""
    day = lake / "raw" / "events" / f"ds={ds}"
    first = json.loads(gzip.decompress(sorted(day.glob("*.json.gz"))[0].read_bytes()).splitlines()[0])
    base = {k: first[k] for k in ("item_id", "session_id", "device", "country")}
    base["item_id"] = base["item_id"] or next(
        json.loads(x)["item_id"] for x in gzip.decompress(
            sorted((lake / "raw" / "catalog" / f"ds={ds}").glob("*.json.gz"))[0].read_bytes()
        ).splitlines()
    )

    def ev(eid: str, minute: int, **kw: object) -> dict:
        return {"event_id": eid, "event_time": f"{ds}T12:{minute:02d}:00+00:00", "user_id": PLANTED_USER,
                "event_type": "view", "query": None, "position": 1, "price": 5.0, "quantity": None,
                "ip": PLANTED_IP, "email": PLANTED_EMAIL, **base, **kw}

    lines = [
        # clean; phone is an unknown field, and so is a key that is itself an address
        json.dumps(ev("planted-1", 1, phone=PLANTED_PHONE, **{PLANTED_EMAIL: 1})),
        json.dumps(ev("planted-2", 2, event_type="search", item_id=None,
                      query=f"call {PLANTED_PHONE} or mail {PLANTED_EMAIL} from {PLANTED_IP}")),
        json.dumps(ev("planted-3", 3, price=-1.0)),  # quarantined: negative_price
        json.dumps(ev("planted-4", 4, position="first", phone=PLANTED_PHONE)),  # wrong_type: line kept
        json.dumps(ev("planted-5", 5, phone=PLANTED_PHONE))[:-40],  # truncated: malformed_json
    ]
    (day / "part-planted.json.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    marker = day / LANDING_MARKER
    if marker.exists():
        files = {p.name: p.stat().st_size for p in day.glob("*.json.gz")}
        total = sum(len([ln for ln in gzip.decompress(p.read_bytes()).splitlines() if ln.strip()])
                    for p in day.glob("*.json.gz"))
        marker.write_text(manifest_text(files, total))
