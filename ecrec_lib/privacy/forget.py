"""The right to be forgotten: erase users from the lake, the warehouse and the model registry.

A request names users by their raw id (the shop's ``user_id``) or by their pseudonym
(``user_key`` = HMAC-SHA256 of the raw id, see ``ecrec_lib.pipeline.pseudonymize``); both are
turned into the set of pseudonyms, and a raw line belongs to a user when the HMAC of its
``user_id`` is in that set, so the two kinds of request find exactly the same rows.

What :func:`forget_users` does, in this order (each step is safe to repeat):

1. **Plan**: scan every ``ds`` partition of the lake zones (:data:`ZONES`) and count the rows of
   those users (Parquet: the ``user_key`` / ``user_id`` columns and the ``raw_line`` of
   quarantined rows; JSON-lines files: the ``user_id`` of each line, or a pseudonym anywhere in
   a masked line). The day's events must still balance once they are gone: the raw lines
   removed must equal the clean + quarantined rows removed + their duplicate lines, else the
   request stops here with nothing changed (some derived row would otherwise be missed). The
   plan is written to the audit record ``ops/forget/<request id>.json`` (``status:
   in_progress``) before anything changes, so a re-run after a kill knows what the first
   attempt removed.
2. **Models**: every registered version whose training window covers a day the users were
   active gets the version tag ``erasure_pending`` (``ecrec_lib.registry.client.ERASURE_TAG``):
   the next night retrains (``jobs.should_train``) and the promotion gate replaces the champion
   with a clean challenger (``ecrec_lib.registry.gate.decide``). Model artifacts are not edited:
   their user x item matrix has no user keys, so the rows cannot be found, only retrained away.
3. **Warehouse**: one transaction deletes their rows from every table of the schema that has a
   ``user_key`` column (score tables, staging leftovers, feedback tables if they ever hold keys).
4. **Lake**: each affected partition is rewritten beside itself without their rows and swapped
   in (:func:`ecrec_lib.lake.replace_local_dir`), so a kill leaves every partition either old or
   new; unaffected files are hard-linked, not copied. ``ops/reconciliation/ds=D/events.json`` is
   then updated: input, clean, quarantined and duplicate counts drop by what was removed and a
   ``forgotten`` block records it per request, so the equation still holds.
5. **Audit**: the record becomes ``status: done`` and one line is appended to
   ``ops/forget/forget_log.jsonl``: request id, pseudonyms, times, partitions touched, rows
   removed per zone and per warehouse table, flagged model versions. Never a raw id.

Local lakes only (``lake_root`` a directory); object stores need their own atomic rewrite.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import logging
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecrec_lib.config import EcrecConfig
from ecrec_lib.lake import Lake, ds_range, is_local, parse_ds, replace_local_dir
from ecrec_lib.landing import LANDING_MARKER
from ecrec_lib.pipeline.clean import dedupe_event_id_py
from ecrec_lib.pipeline.normalize import clean_text_py

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

# Lake zones that hold per-user rows, partitioned <zone>/<dataset>/ds=D (quarantine_raw, the
# restricted zone of quarantined raw lines, may also be <zone>/ds=D).
ZONES = ("raw", "quarantine_raw", "quarantine", "clean", "features", "scores")
USER_COLUMNS = ("user_key", "user_id")  # Parquet columns that name a user
# Parquet columns holding a line: the exact bytes (quarantine_raw) or the masked text
# (quarantine), where the user id is replaced by its pseudonym
LINE_COLUMNS = ("raw_line", "masked_line")
LINE_SUFFIXES = (".json.gz", ".jsonl.gz", ".txt.gz", ".json", ".jsonl", ".txt")
LEFTOVER_PREFIXES = (".old-", ".tmp-")  # replace_local_dir / publish leftovers after a kill
AUDIT_DIR = ("ops", "forget")
AUDIT_LOG = "forget_log.jsonl"
PSEUDONYM = re.compile(r"[0-9a-f]{64}")
_HEX64 = re.compile(rb"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")
_USER_ID = re.compile(rb'"user_id"\s*:\s*"((?:[^"\\]|\\.)*)"')
_SQL_CHUNK = 500  # user keys per DELETE ... IN (...)


class ForgetError(ValueError):
    """The request cannot be carried out safely; the message says why and what to do."""


# ----------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class ForgetRequest:
    """Who to erase: always as pseudonyms (raw ids, when given, only match raw lines faster)."""

    request_id: str
    pseudonyms: frozenset[str]
    raw_ids: frozenset[str] = frozenset()
    id_kind: str = "raw"  # raw | pseudonym: what the request file held

    @classmethod
    def build(cls, ids: Iterable[str], key: bytes, *, pseudonyms: bool = False,
              request_id: str | None = None) -> ForgetRequest:
        ids = [i for i in dict.fromkeys(ids)]
        if not ids:
            raise ForgetError("the request names no user; put one id per line in the users file")
        if pseudonyms:
            keys = frozenset(ids)
            raw: frozenset[str] = frozenset()
        else:
            raw = frozenset(ids)
            keys = frozenset(hmac.new(key, i.encode("utf-8"), hashlib.sha256).hexdigest()
                             for i in ids)
        rid = request_id or "fr-" + hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", rid):
            raise ForgetError(f"request id {rid!r} must be 1-100 letters, digits, '_', '.' or '-'")
        return cls(rid, keys, raw, "pseudonym" if pseudonyms else "raw")


def read_users_file(path: str | os.PathLike[str], *, pseudonyms: bool = False) -> list[str]:
    """Ids from a request file: one per line, blank lines and ``#`` comments ignored.

    Errors name the line number, never its content (it may be a raw id).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"users file {p} does not exist; pass a file with one user id per line")
    ids: list[str] = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if pseudonyms and not PSEUDONYM.fullmatch(text):
            raise ForgetError(
                f"{p} line {n} is not a pseudonym (64 lower-case hex characters, the clean "
                "data's user_key); drop --pseudonyms if the file holds raw user ids"
            )
        if not pseudonyms and PSEUDONYM.fullmatch(text):
            raise ForgetError(
                f"{p} line {n} looks like a pseudonym (user_key), not a raw user id; pass "
                "--pseudonyms for a file of pseudonyms"
            )
        ids.append(text)
    if not ids:
        raise ForgetError(f"users file {p} names no user; put one id per line")
    return ids


class UserMatcher:
    """Decides whether a raw line or an id belongs to one of the request's users."""

    def __init__(self, request: ForgetRequest, key: bytes) -> None:
        self.request = request
        self._key = key
        self._keys_b = {k.encode() for k in request.pseudonyms}
        self._seen: dict[bytes, bool] = {}

    def id_matches(self, uid: bytes) -> bool:
        hit = self._seen.get(uid)
        if hit is None:
            text = uid.decode("utf-8", "replace")
            hit = (text in self.request.raw_ids or text in self.request.pseudonyms
                   or hmac.new(self._key, uid, hashlib.sha256).hexdigest() in self.request.pseudonyms)
            self._seen[uid] = hit
        return hit

    def line_matches(self, line: bytes, scan_pseudonyms: bool = False) -> bool:
        """The line's ``user_id`` is one of theirs (raw id, or a masked line's pseudonym); with
        ``scan_pseudonyms``, any of their pseudonyms anywhere in the line also counts."""
        uid = line_user_id(line)
        if uid is not None and self.id_matches(uid):
            return True
        return scan_pseudonyms and any(t in self._keys_b for t in _HEX64.findall(line))


def line_user_id(line: bytes) -> bytes | None:
    """The ``user_id`` string of a JSON line (also of a truncated one, when it survived)."""
    m = _USER_ID.search(line)
    if m is None:
        return None
    value = m.group(1)
    if b"\\" in value:  # JSON escapes: decode them as the clean stage's parser does
        try:
            value = json.loads(b'"' + value + b'"').encode("utf-8")
        except ValueError:
            return value
    try:  # whitespace normalized as clean's user id is (a line that is not UTF-8 stays as it is)
        text = clean_text_py(value.decode("utf-8"))
    except UnicodeDecodeError:
        return value
    return text.encode("utf-8") if text is not None else None


# ----------------------------------------------------------------------------- partitions


@dataclass(frozen=True)
class Partition:
    zone: str
    dataset: str  # "" when the zone is partitioned directly by ds
    ds: str
    path: Path

    @property
    def name(self) -> str:
        return "/".join(p for p in (self.zone, self.dataset, f"ds={self.ds}") if p)


def lake_partitions(lake_root: str | Path, zones: Iterable[str] = ZONES) -> list[Partition]:
    """Every ``ds=`` partition under the zones (hidden and ``_`` folders skipped)."""
    root = Path(str(lake_root).removeprefix("file://"))
    out: list[Partition] = []

    def add(zone: str, dataset: str, folder: Path) -> None:
        for p in sorted(folder.iterdir()):
            if p.is_dir() and p.name.startswith("ds="):
                out.append(Partition(zone, dataset, parse_ds(p.name[3:]).isoformat(), p))

    for zone in zones:
        zdir = root / zone
        if not zdir.is_dir():
            continue
        add(zone, "", zdir)
        for ddir in sorted(zdir.iterdir()):
            if ddir.is_dir() and not ddir.name.startswith(("_", ".", "ds=")):
                add(zone, ddir.name, ddir)
    return out


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(("_", ".")))


def _kind(path: Path) -> str:
    if path.name.endswith(".parquet"):
        return "parquet"
    if path.name.endswith(LINE_SUFFIXES):
        return "lines"
    raise ForgetError(
        f"{path} is neither Parquet nor JSON lines, so its users cannot be checked; move it out "
        "of the lake or teach ecrec_lib/privacy/forget.py its format, then re-run the request"
    )


def _read_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return data.split(b"\n")


def _write_lines(path: Path, lines: list[bytes]) -> None:
    data = b"\n".join(lines)
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)  # deterministic, like the generator
    path.write_bytes(data)


def _parquet_mask(table: pa.Table, matcher: UserMatcher, scan_pseudonyms: bool) -> list[bool]:
    """Per row: does it belong to one of the users?"""
    import pyarrow as pa
    import pyarrow.compute as pc

    mask = pa.array([False] * table.num_rows, pa.bool_())
    for col in USER_COLUMNS:
        if col in table.column_names:
            values = table.column(col)
            if col == "user_key":
                hit = pc.is_in(values, value_set=pa.array(sorted(matcher.request.pseudonyms)))
            else:
                hit = pa.array([v is not None and matcher.id_matches(v.encode())
                                for v in values.to_pylist()], pa.bool_())
            mask = pc.or_(mask, pc.fill_null(hit, False))
    for col in LINE_COLUMNS:
        if col in table.column_names:
            lines = table.column(col).to_pylist()
            hit = pa.array([v is not None and matcher.line_matches(
                v if isinstance(v, bytes) else v.encode(), scan_pseudonyms) for v in lines],
                pa.bool_())
            mask = pc.or_(mask, hit)
    return mask.to_pylist()


def _parquet_user_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    return [c for c in (*USER_COLUMNS, *LINE_COLUMNS, "reason") if c in names]


@dataclass
class PartitionScan:
    """How many rows of the users a partition holds (what rewriting it will remove)."""

    partition: Partition
    rows: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)  # quarantine only
    duplicate_lines: int = 0  # raw events only: their repeated event ids (the clean dedupe)

    def to_dict(self) -> dict[str, Any]:
        return {"partition": self.partition.name, "rows": self.rows,
                "by_reason": dict(sorted(self.by_reason.items())),
                "duplicate_lines": self.duplicate_lines}


def scan_partition(part: Partition, matcher: UserMatcher) -> PartitionScan:
    """Count the users' rows in one partition (reads only the columns that name users)."""
    import pyarrow.parquet as pq

    scan = PartitionScan(part)
    pseudo_lines = part.zone == "quarantine"  # masked lines carry the pseudonym
    reasons: Counter[str] = Counter()
    event_ids: Counter[str] = Counter()
    for f in _data_files(part.path):
        if _kind(f) == "parquet":
            cols = _parquet_user_columns(f)
            if not any(c in cols for c in (*USER_COLUMNS, *LINE_COLUMNS)):
                continue
            table = pq.read_table(f, columns=cols)
            mask = _parquet_mask(table, matcher, pseudo_lines)
            scan.rows += sum(mask)
            if "reason" in cols:
                reasons.update(r for r, m in zip(table.column("reason").to_pylist(), mask,
                                                 strict=True) if m)
            continue
        for line in _read_lines(f):
            if line and matcher.line_matches(line, pseudo_lines):
                scan.rows += 1
                if part.zone == "raw" and part.dataset == "events":
                    eid = dedupe_event_id_py(line)
                    if eid is not None:
                        event_ids[eid] += 1
    scan.by_reason = {str(k): v for k, v in reasons.items()}
    scan.duplicate_lines = sum(n - 1 for n in event_ids.values())
    return scan


def rewrite_partition(part: Partition, matcher: UserMatcher) -> int:
    """Replace the partition with a copy without the users' rows (atomic swap); rows removed.

    Files without their rows are hard-linked into the new copy (with their checksum files);
    a rewritten Parquet file keeps its schema and metadata, and gets no stale ``.crc``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    pseudo_lines = part.zone == "quarantine"
    removed = 0

    def write(tmp: Path) -> None:
        nonlocal removed
        rewritten: set[str] = set()
        for f in _data_files(part.path):
            if _kind(f) == "parquet":
                cols = _parquet_user_columns(f)
                if any(c in cols for c in (*USER_COLUMNS, *LINE_COLUMNS)):
                    table = pq.read_table(f)
                    mask = _parquet_mask(table, matcher, pseudo_lines)
                    n = sum(mask)
                    if n:
                        kept = table.filter(pa.array([not m for m in mask], pa.bool_()))
                        # microseconds: what Spark reads (it refuses nanosecond timestamps)
                        pq.write_table(kept, tmp / f.name, coerce_timestamps="us",
                                       allow_truncated_timestamps=True)
                        removed += n
                        rewritten.add(f.name)
            else:
                lines = _read_lines(f)
                kept_lines = [ln for ln in lines if not (ln and matcher.line_matches(ln, pseudo_lines))]
                if len(kept_lines) != len(lines):
                    _write_lines(tmp / f.name, kept_lines)
                    removed += len(lines) - len(kept_lines)
                    rewritten.add(f.name)
        for f in sorted(part.path.iterdir()):
            if not f.is_file() or f.name in rewritten:
                continue
            if f.name == LANDING_MARKER and rewritten:
                continue  # rewritten below: its manifest lists the old sizes
            if f.name.startswith(".") and f.name.endswith(".crc") and f.name[1:-4] in rewritten:
                continue  # the checksum of a file that changed
            _link_or_copy(f, tmp / f.name)
        marker = part.path / LANDING_MARKER
        if rewritten and marker.is_file():
            _refresh_landing_manifest(marker.read_text(), tmp)

    replace_local_dir(part.path, write)
    return removed


def _refresh_landing_manifest(old: str, folder: Path) -> None:
    """``_SUCCESS`` for a rewritten raw day: an empty marker stays empty; a landing manifest
    (docs/data_contracts.md, "Landing") lists the new sizes and line count, so the day still
    reads as landed (a stale size would make the sensor wait for a landing that never ends)."""
    out = folder / LANDING_MARKER
    if not old.strip():
        out.write_text("")
        return
    manifest = json.loads(old)
    files = {name: (folder / name).stat().st_size for name in manifest.get("files", {})}
    manifest["files"] = files
    if "lines" in manifest:
        manifest["lines"] = sum(sum(1 for ln in _read_lines(folder / n) if ln) for n in files)
    out.write_text(json.dumps(manifest, indent=1))


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def remove_leftovers(lake_root: str | Path) -> list[str]:
    """Delete hidden ``.old-*`` / ``.tmp-*`` partition copies a killed swap left behind (they may
    still hold erased rows); returns their lake-relative paths."""
    root = Path(str(lake_root).removeprefix("file://"))
    gone: list[str] = []
    for zone in ZONES:
        zdir = root / zone
        if not zdir.is_dir():
            continue
        for folder in [zdir, *[d for d in zdir.iterdir() if d.is_dir()]]:
            for p in folder.iterdir():
                if p.is_dir() and p.name.startswith(LEFTOVER_PREFIXES):
                    shutil.rmtree(p)
                    gone.append(str(p.relative_to(root)))
    return sorted(gone)


# ----------------------------------------------------------------------------- reconciliation


def update_reconciliation(lake: Lake, ds: str, request_id: str, scans: Mapping[str, PartitionScan]
                          ) -> dict[str, Any] | None:
    """Take the removed rows out of ``ops/reconciliation/ds=D/events.json`` (once per request).

    ``scans`` holds this ds's scans of ``raw/events``, ``clean/events`` and
    ``quarantine/events`` by partition name. Returns the new record, or None when there was
    nothing to change (no record, no rows, or this request was already applied).
    """
    path = Path(lake.ops("reconciliation", ds)) / "events.json"
    if not path.is_file():
        return None

    def rows(zone: str) -> PartitionScan | None:
        return scans.get(f"{zone}/events/ds={ds}")

    raw, clean, quar = rows("raw"), rows("clean"), rows("quarantine")
    n_raw = raw.rows if raw else 0
    n_clean = clean.rows if clean else 0
    n_quar = quar.rows if quar else 0
    n_dup = raw.duplicate_lines if raw else 0
    if n_raw + n_clean + n_quar == 0:
        return None
    rec = json.loads(path.read_text())
    forgotten = rec.get("forgotten") or {"requests": [], "input_rows": 0, "clean_rows": 0,
                                         "quarantined_rows": 0, "duplicate_rows": 0}
    if request_id in forgotten["requests"]:
        return None
    by_reason = dict(rec.get("quarantine_by_reason") or {})
    for reason, n in (quar.by_reason if quar else {}).items():
        by_reason[reason] = by_reason.get(reason, 0) - n
    rec["quarantine_by_reason"] = {k: v for k, v in sorted(by_reason.items()) if v}
    for name, n in (("input_rows", n_raw), ("clean_rows", n_clean),
                    ("quarantined_rows", n_quar), ("duplicate_rows", n_dup)):
        rec[name] = int(rec.get(name, 0)) - n
        forgotten[name] = int(forgotten.get(name, 0)) + n
    forgotten["requests"] = [*forgotten["requests"], request_id]
    rec["forgotten"] = forgotten
    rec["balanced"] = rec["input_rows"] == (
        rec["clean_rows"] + rec["quarantined_rows"] + rec["duplicate_rows"])
    _write_json(path, rec)
    return rec


def check_balance(scans: Iterable[PartitionScan], cleaned_days: Iterable[str]) -> list[str]:
    """Days where the users' raw lines != their clean + quarantined rows + duplicate lines.

    Only ``cleaned_days`` (those with a reconciliation record) are checked: a raw day that
    landed but is not cleaned yet has no derived rows to balance against.
    """
    cleaned = set(cleaned_days)
    per_ds: dict[str, dict[str, PartitionScan]] = {}
    for s in scans:
        if s.partition.dataset == "events" and s.partition.zone in ("raw", "clean", "quarantine"):
            per_ds.setdefault(s.partition.ds, {})[s.partition.zone] = s
    problems = []
    for ds, z in sorted(per_ds.items()):
        if "raw" not in z or ds not in cleaned:
            continue  # raw gone (retention) or not cleaned yet: nothing to balance against
        raw = z["raw"]
        clean = z["clean"].rows if "clean" in z else 0
        quar = z["quarantine"].rows if "quarantine" in z else 0
        if raw.rows != clean + quar + raw.duplicate_lines:
            problems.append(f"ds={ds}: {raw.rows} raw lines but {clean} clean + {quar} "
                            f"quarantined rows + {raw.duplicate_lines} duplicate lines")
    return problems


# ----------------------------------------------------------------------------- warehouse


def warehouse_exists(url: str) -> bool:
    """False only for a DuckDB file not created yet (nothing published: nothing to change)."""
    if not url.startswith("duckdb://"):
        return True
    path = url.removeprefix("duckdb://")
    path = path[1:] if path.startswith("/./") else path
    return path == "/:memory:" or Path(path).is_file()


def erase_from_warehouse(cfg: EcrecConfig, pseudonyms: Iterable[str]) -> dict[str, int]:
    """Delete the users' rows from every base table with a ``user_key`` column, in one
    transaction; returns rows deleted per table (nothing to do without a warehouse)."""
    from ecrec_lib.warehouse import connect
    from ecrec_lib.warehouse.backend import ident

    if not warehouse_exists(cfg.warehouse_url):
        log.info("no DuckDB warehouse at %s yet: nothing to erase there", cfg.warehouse_url)
        return {}
    keys = sorted(pseudonyms)
    out: dict[str, int] = {}
    with connect(cfg.warehouse_url, cfg.warehouse_schema) as wh:
        tables = wh.query(
            "SELECT c.table_name AS t FROM information_schema.columns c "
            "JOIN information_schema.tables t ON t.table_schema = c.table_schema "
            "AND t.table_name = c.table_name "
            "WHERE c.table_schema = %s AND c.column_name = 'user_key' "
            "AND t.table_type = 'BASE TABLE' ORDER BY c.table_name",
            [cfg.warehouse_schema],
        )["t"].tolist()
        with wh.transaction():
            for table in tables:
                n = 0
                for i in range(0, len(keys), _SQL_CHUNK):
                    chunk = keys[i:i + _SQL_CHUNK]
                    marks = ", ".join(["%s"] * len(chunk))
                    where = f"{ident('user_key')} IN ({marks})"
                    n += int(wh.scalar(f"SELECT count(*) FROM {wh.fq(table)} WHERE {where}", chunk))
                    wh.execute(f"DELETE FROM {wh.fq(table)} WHERE {where}", chunk)
                out[str(table)] = n
    return out


# ----------------------------------------------------------------------------- models


def version_window(tags: Mapping[str, str], lookback_days: int) -> tuple[str, str] | None:
    """(first ds, last ds) of the data a registered version was trained on, from its card
    inputs, else its ``ds`` tag and ``lookback_days``; None when the version does not say."""
    try:
        window = json.loads(tags.get("card_inputs", "{}")).get("data_window") or {}
    except ValueError:
        window = {}
    first = window.get("window_start") or window.get("first_ds")
    last = window.get("window_end") or window.get("last_ds")
    if first and last:
        return str(first), str(last)
    ds = tags.get("ds")
    if ds:
        return ds_range(ds, lookback_days)[0], ds
    return None


def flag_models(cfg: EcrecConfig, request_id: str, active_ds: Iterable[str]) -> list[str]:
    """Tag every version whose training window covers one of ``active_ds``; returns them all
    (already flagged ones included). A version that does not record its window is flagged."""
    from ecrec_lib.registry import client as reg

    days = sorted(set(active_ds))
    if not days:
        return []
    uri = cfg.registry_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        log.info("no MLflow database at %s: no model to flag", uri)
        return []
    client = reg.connect(cfg)
    flagged = []
    for mv in reg.list_versions(client, cfg.registered_model_name):
        window = version_window(mv.tags or {}, cfg.lookback_days)
        if window is not None and not any(window[0] <= d <= window[1] for d in days):
            continue
        if reg.flag_for_erasure(client, cfg.registered_model_name, str(mv.version), request_id):
            log.info("flagged %s version %s (training window %s)", cfg.registered_model_name,
                     mv.version, window or "unknown")
        flagged.append(str(mv.version))
    return flagged


# ----------------------------------------------------------------------------- the whole request


def audit_dir(lake: Lake) -> Path:
    return Path(lake.dataset(*AUDIT_DIR))


def _write_json(path: Path, record: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


def _now() -> str:
    # an audit timestamp says when the erasure happened: wall clock, not a logical date
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def forget_users(cfg: EcrecConfig, request: ForgetRequest, key: bytes,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Carry out one erasure request (see the module docstring); returns its audit record."""
    if not is_local(cfg.lake_root):
        raise ForgetError(
            f"lake_root {cfg.lake_root} is not a local directory; forget_users rewrites "
            "partitions with a local atomic swap (run it where the lake is mounted)"
        )
    say = progress or log.info
    lake = Lake(cfg.lake_root)
    record_path = audit_dir(lake) / f"{request.request_id}.json"
    earlier = json.loads(record_path.read_text()) if record_path.is_file() else None
    matcher = UserMatcher(request, key)

    started = time.perf_counter()
    scans = {s.partition.name: s for s in
             (scan_partition(p, matcher) for p in lake_partitions(lake.root)) if s.rows}
    say(f"scan: {sum(s.rows for s in scans.values())} rows in {len(scans)} partitions "
        f"({time.perf_counter() - started:.1f} s)")
    # A re-run after a kill: partitions already rewritten scan as empty, the first plan has them.
    planned = {name: PartitionScan(_partition_from(lake, name), int(s["rows"]), dict(s["by_reason"]),
                                   int(s["duplicate_lines"]))
               for name, s in ((earlier or {}).get("plan") or {}).items()}
    plan = {**planned, **scans}
    cleaned = [ds for ds in {s.partition.ds for s in plan.values()}
               if (Path(lake.ops("reconciliation", ds)) / "events.json").is_file()]
    problems = check_balance(plan.values(), cleaned)
    if problems:
        raise ForgetError(
            "the users' rows do not balance, so some derived row of theirs would be missed; "
            "nothing was changed: " + "; ".join(problems) + ". Check the day's reconciliation "
            "and quarantine, then re-run the request"
        )
    active = sorted({s.partition.ds for s in plan.values()} | set((earlier or {}).get("active_ds", [])))
    record: dict[str, Any] = {
        "request_id": request.request_id,
        "id_kind": request.id_kind,
        "pseudonyms": sorted(request.pseudonyms),
        "n_users": len(request.pseudonyms),
        "requested_at": (earlier or {}).get("requested_at") or _now(),
        "status": "in_progress",
        "active_ds": active,
        "plan": {name: s.to_dict() for name, s in sorted(plan.items())},
        "runs": [*(earlier or {}).get("runs", []), {"started_at": _now()}],
    }
    _write_json(record_path, record)

    # the record adds up every run of the request (a re-run finds nothing left to remove)
    flagged = flag_models(cfg, request.request_id, active)
    say(f"model versions flagged: {flagged or 'none'}")
    record["flagged_model_versions"] = sorted(
        set((earlier or {}).get("flagged_model_versions", [])) | set(flagged), key=int)
    removed_wh = Counter((earlier or {}).get("warehouse_rows_removed", {}))
    now_wh = erase_from_warehouse(cfg, request.pseudonyms)
    say(f"warehouse rows removed: {now_wh or 'none'}")
    removed_wh.update(now_wh)
    record["warehouse_rows_removed"] = dict(sorted(removed_wh.items()))
    _write_json(record_path, record)  # a kill from here on keeps these counts

    removed_now: dict[str, int] = {}
    for name, scan in sorted(scans.items()):
        t0 = time.perf_counter()
        removed_now[name] = rewrite_partition(scan.partition, matcher)
        say(f"rewrote {name}: -{removed_now[name]} rows ({time.perf_counter() - t0:.1f} s)")
    record["stale_copies_removed"] = remove_leftovers(lake.root)
    reconciled = []
    for ds in active:
        day_scans = {n: s for n, s in plan.items() if s.partition.ds == ds}
        if update_reconciliation(lake, ds, request.request_id, day_scans) is not None:
            reconciled.append(ds)
    record["reconciliation_updated"] = sorted(
        set((earlier or {}).get("reconciliation_updated", [])) | set(reconciled))

    per_zone: Counter[str] = Counter()
    for s in plan.values():
        per_zone[s.partition.zone] += s.rows
    record["partitions_touched"] = sorted(plan)
    record["rows_removed_by_zone"] = dict(sorted(per_zone.items()))
    record["rows_removed_this_run"] = sum(removed_now.values())
    record["status"] = "done"
    record["completed_at"] = _now()
    record["runs"][-1].update(completed_at=record["completed_at"],
                              rows_removed=record["rows_removed_this_run"])
    _write_json(record_path, record)
    if earlier is None or earlier.get("status") != "done" or removed_now:
        _append_log(lake, {k: record[k] for k in (
            "request_id", "id_kind", "pseudonyms", "requested_at", "completed_at",
            "partitions_touched", "rows_removed_by_zone", "rows_removed_this_run",
            "warehouse_rows_removed", "flagged_model_versions", "reconciliation_updated")})
    return record


def _partition_from(lake: Lake, name: str) -> Partition:
    parts = name.split("/")
    zone, ds = parts[0], parts[-1].removeprefix("ds=")
    dataset = parts[1] if len(parts) == 3 else ""
    return Partition(zone, dataset, ds, Path(lake.dataset(zone, dataset).rstrip("/")) / f"ds={ds}")


def _append_log(lake: Lake, line: Mapping[str, Any]) -> None:
    path = audit_dir(lake) / AUDIT_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(line, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


__all__ = [
    "ForgetError",
    "ForgetRequest",
    "Partition",
    "PartitionScan",
    "UserMatcher",
    "check_balance",
    "erase_from_warehouse",
    "flag_models",
    "forget_users",
    "lake_partitions",
    "read_users_file",
    "remove_leftovers",
    "rewrite_partition",
    "scan_partition",
    "update_reconciliation",
    "version_window",
    "warehouse_exists",
]
