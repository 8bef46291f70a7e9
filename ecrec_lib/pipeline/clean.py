"""Clean one day of raw data: catalog snapshot first, then events.

Line checks shared by both datasets (first, in this order; limits in ``ecrec_lib.contracts``):
  ``invalid_utf8``                 the line's bytes are not UTF-8 (never decoded as U+FFFD)
  ``field_too_long``               the line or a string field over its contract limit
  ``wrong_type``                   a contract field of the wrong JSON type (a number as
                                   user_id, an object as query), found in the raw text: the
                                   JSON reader would silently turn it into a string

Catalog rules (first match wins; ``reason`` column of quarantine/catalog):
  1. the line checks, then ``malformed_json`` (line is not a JSON object)
  2. ``missing_required_field``    no item_id
  3. ``missing_title``             title null or blank
  4. ``bad_price``                 negative or NaN price (a *null* price is allowed: real
                                   Amazon data has none)
  5. ``conflicting_item_id``       same item_id with different content: the newest row
                                   (created_at, then a content hash: deterministic) is kept,
                                   the others are quarantined
Exact duplicates (identical normalized content) are dropped and counted.

Event rules (first match wins; ``reason`` column of quarantine/events):
  1. the line checks, then ``malformed_json`` (unparsable line)
  2. ``missing_user_id``
  3. ``missing_required_field``    event_id, event_time, session_id or event_type null; item_id
                                   null on an item event; query null on a search
  4. ``unparsable_event_time``, ``bad_timestamp`` (parsable but without UTC offset)
  5. ``bot_traffic``               the user has more than ``cfg.bot_max_events_per_minute``
                                   events in some UTC minute of the day (counted after
                                   dedupe over rows that pass rules 1-4): *all* their events
  6. ``invalid_event_type``        not in schema.EVENT_TYPES
  7. ``negative_price``
  8. ``non_positive_quantity``     quantity <= 0 on add_to_cart / purchase (null is allowed)
  9. ``outside_ds_window``         event_time outside [ds - tol, ds + 1 day + tol),
                                   tol = ``cfg.late_tolerance_hours``
 10. ``unknown_item_id``           item_id not in the day's clean catalog
Exact duplicates by event_id (among parsable rows) are removed before the rules, keeping the
row with the smallest hash of the raw line (identical lines: any one of them), and counted.

Privacy boundary: clean and quarantine hold no raw id or PII. ``user_id`` becomes ``user_key``,
``event_id`` / ``session_id`` their keyed pseudonyms (after the dedupe, which compares the raw
ids), PII fields are dropped, search queries are masked by pattern
(``ecrec_lib.privacy.masking``), and a quarantined row keeps a *masked* line. The exact line
goes only to the restricted ``quarantine_raw/<dataset>/ds=D`` (one row per quarantined row).

Reconciliation (``ops/reconciliation/ds=D/{events,catalog}.json``): input rows = clean +
quarantined + duplicates, checked against the *staged Parquet files* before anything is
published. Unknown (drifted) raw fields are dropped and listed there with their row counts.
"""

from __future__ import annotations

import logging
import math
import re
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ecrec_lib import partitions
from ecrec_lib import schema as S
from ecrec_lib.config import EcrecConfig, resolve_pseudonymization_key
from ecrec_lib.contracts import MAX_FIELD_CHARS, MAX_LINE_BYTES
from ecrec_lib.lake import Lake, parse_ds
from ecrec_lib.pipeline import io
from ecrec_lib.pipeline.normalize import (
    clean_text,
    clean_text_py,
    normalize_queries,
    parse_utc_timestamp,
)
from ecrec_lib.pipeline.pseudonymize import BROADCAST_MAX_IDS, add_user_key, key_ids
from ecrec_lib.privacy.masking import mask_line_col, mask_text_col, mask_text_py

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

CORRUPT = "_corrupt_record"
# raw fields whose values never appear in ops/ (validation samples): ids and personal data
RAW_REDACTED_COLUMNS = ("user_id", "session_id", "event_id", *S.PII_FIELDS)
LINE_RULES = (S.REASON_INVALID_UTF8, S.REASON_TOO_LONG, S.REASON_WRONG_TYPE)
EVENT_RULES = (
    *LINE_RULES, S.REASON_MALFORMED, S.REASON_MISSING_USER, S.REASON_MISSING_REQUIRED,
    S.REASON_BAD_TIME, S.REASON_BAD_TIMESTAMP, S.REASON_BOT, S.REASON_BAD_EVENT_TYPE,
    S.REASON_NEGATIVE_PRICE, S.REASON_BAD_QUANTITY, S.REASON_OUT_OF_WINDOW, S.REASON_UNKNOWN_ITEM,
)
CATALOG_RULES = (
    *LINE_RULES, S.REASON_MALFORMED, S.REASON_MISSING_REQUIRED, S.REASON_MISSING_TITLE,
    S.REASON_BAD_PRICE, S.REASON_DUPLICATE_ITEM,
)
# A time of day followed by a UTC offset at the end of the text; try_to_timestamp also accepts
# text without one (and reads it in the session time zone), which the contract calls invalid.
TIME_WITH_OFFSET = "[Tt ][0-9]{2}:[0-9]{2}.*[0-9](?:Z|z|[+-][0-9]{2}(?::?[0-9]{2})?)$"
_JSON_WS = "[ \\t\\r\\n]*"
# How a value of the wrong JSON type starts, per contract type (``n`` not followed by ``ull``:
# not null; an integer written with a fraction or exponent is not an integer).
_WRONG_START = {
    "string": "[-0-9tf\\[{]|n(?!ull)",
    "number": "[tf\"\\[{]|n(?!ull)",
    "integer": "[tf\"\\[{]|n(?!ull)|-?[0-9]+[.eE]",
    "boolean": "[-0-9\"\\[{]|n(?!ull)|t(?!rue)|f(?!alse)",
}
QUARANTINE_EVENT_COLUMNS = (
    "event_id", "event_time", "user_key", "session_id", "event_type", "item_id", "query",
    "position", "price", "quantity", "device", "country", *S.QUARANTINE_EXTRA_COLUMNS,
)
QUARANTINE_CATALOG_COLUMNS = (
    "item_id", "title", "description", "category_path", "brand", "price", "in_stock",
    "created_at", *S.QUARANTINE_EXTRA_COLUMNS,
)


class ReconciliationError(RuntimeError):
    """Input rows != clean + quarantined + duplicates: rows would be lost; nothing published."""


def wrong_type_pattern(fields: dict[str, str]) -> str:
    """A regex matching a raw JSON line where some contract field holds a value of the wrong
    JSON type. Spark's JSON reader turns a number, boolean, object or array given for a string
    field into its text (``123`` -> ``"123"``), so the type is only visible in the raw text.
    A key inside a string value is escaped (``\\"user_id\\"``) and never matches; a key of a
    nested object that repeats a contract name does (conservative: quarantined, not lost)."""
    parts = []
    for json_type, start in _WRONG_START.items():
        names = [n for n, t in fields.items() if t == json_type]
        if names:
            parts.append(f'(?<!\\\\)"(?:{"|".join(names)})"{_JSON_WS}:{_JSON_WS}(?:{start})')
    return "|".join(parts)


def dedupe_event_id_py(line: bytes) -> str | None:
    """Reference twin of the events dedupe key: the normalized ``event_id`` of a line that takes
    part in the dedupe, or None. Like :func:`classify_events`, a line that fails a line check
    (:data:`LINE_RULES`) or does not parse as a JSON object never does: it is quarantined."""
    import json

    if len(line) > MAX_LINE_BYTES["events"]:
        return None
    try:
        text = line.decode("utf-8")
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or _EVENT_WRONG_TYPE.search(text):
        return None
    limits = MAX_FIELD_CHARS["events"]
    if any(isinstance(obj.get(n), str) and len(obj[n]) > limits[n]
           for n in S.RAW_EVENT_FIELDS if n in limits):
        return None
    eid = obj.get("event_id")
    return clean_text_py(eid) if isinstance(eid, str) else None


# built once: erasure runs the Python twin on every raw line of every day
_EVENT_WRONG_TYPE = re.compile(wrong_type_pattern(S.RAW_EVENT_FIELDS))


def _line_problem(fields: dict[str, str], kind: str) -> Column:
    """The first line check that fails (:data:`LINE_RULES`), or null; on the raw line and the
    parsed string fields, all built-in expressions (no Python, no extra pass)."""
    from pyspark.sql import functions as F

    limits = MAX_FIELD_CHARS[kind]
    too_long = F.octet_length("raw_line") > F.lit(MAX_LINE_BYTES[kind])
    for name, limit in limits.items():
        if name in fields:
            too_long = too_long | F.coalesce(F.length(name) > F.lit(limit), F.lit(False))
    wrong = F.col("_keys").isNotNull() & F.col("raw_line").rlike(wrong_type_pattern(fields))
    return _first_reason([
        (S.REASON_INVALID_UTF8, ~F.is_valid_utf8("raw_line")),
        (S.REASON_TOO_LONG, too_long),
        (S.REASON_WRONG_TYPE, wrong),
    ])


def spark_schema(fields: dict[str, str]) -> StructType:
    """Explicit Spark schema from a JSON-type contract (schema.RAW_*_FIELDS)."""
    from pyspark.sql import types as T

    types = {"string": T.StringType(), "integer": T.LongType(), "number": T.DoubleType(),
             "boolean": T.BooleanType()}
    return T.StructType([T.StructField(n, types[t]) for n, t in fields.items()])


@dataclass
class Classified:
    """A classified day: ``rows`` (cached) has ``reason`` (null = clean) and ``_dup``."""

    rows: DataFrame
    input_rows: int
    unknown_fields: dict[str, int]
    present_fields: tuple[str, ...]


@dataclass
class Reconciliation:
    dataset: str
    ds: str
    input_rows: int
    clean_rows: int
    quarantined_rows: int
    duplicate_rows: int
    quarantine_by_reason: dict[str, int]
    unknown_fields: dict[str, int] = field(default_factory=dict)
    status: str = "ok"

    @property
    def balanced(self) -> bool:
        return self.input_rows == self.clean_rows + self.quarantined_rows + self.duplicate_rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "ds": self.ds, "status": self.status,
            "input_rows": self.input_rows, "clean_rows": self.clean_rows,
            "quarantined_rows": self.quarantined_rows, "duplicate_rows": self.duplicate_rows,
            "quarantine_by_reason": dict(sorted(self.quarantine_by_reason.items())),
            # fields outside the contract: dropped (PII-like names listed apart for the audit)
            "pii_fields_dropped": {k: v for k, v in sorted(self.unknown_fields.items())
                                   if k in S.PII_FIELDS},
            "unknown_fields_dropped": {k: v for k, v in sorted(self.unknown_fields.items())
                                       if k not in S.PII_FIELDS},
            "balanced": self.balanced,
            "equation": "input_rows = clean_rows + quarantined_rows + duplicate_rows",
        }


@dataclass
class CleanResult:
    ds: str
    events: Reconciliation | None
    catalog: Reconciliation
    no_data: bool = False


def _parse(spark: SparkSession, path: str, fields: dict[str, str], what: str,
           keep_all_lines: bool = False) -> DataFrame:
    """Raw lines -> typed columns + ``_malformed``, ``_bad`` (the failed line check of
    :data:`LINE_RULES`, or null), ``_hash``, ``_unknown``; raw_line kept only for malformed and
    ``_bad`` rows (the parsed fields already carry everything else), or for every row with
    ``keep_all_lines`` (the catalog: a few thousand lines)."""
    from pyspark.sql import functions as F

    parsed = io.parse_json_lines(io.read_raw_lines(spark, path, what), spark_schema(fields), CORRUPT)
    known = F.array(*[F.lit(n) for n in fields])
    malformed = F.col(CORRUPT).isNotNull() | F.col("_keys").isNull()
    non_null = sum((F.col(n).isNotNull().cast("int") for n in fields), F.lit(0))
    bad = _line_problem(fields, what)
    parsed = parsed.withColumn("_bad", bad)
    keep = F.lit(True) if keep_all_lines else (malformed | F.col("_bad").isNotNull())
    return parsed.select(
        *[F.col(n) for n in fields],
        malformed.alias("_malformed"),
        "_bad",
        F.when(keep, F.col("raw_line")).alias("raw_line"),
        F.xxhash64("raw_line").alias("_hash"),
        # a row identity for tie-breaks between identical lines; the callers cache this frame,
        # so every consumer sees the same ids (a recomputation reads the same splits in order)
        F.monotonically_increasing_id().alias("_row"),
        # Unknown (drifted) keys. A line has one only if it holds more keys than it has
        # non-null contract fields (a superset test: a contract key with a JSON null also
        # counts), so the per-row set difference runs on those lines alone (warm parse + cache
        # of 1M events: 10.6 s with it on every line, 9.3-9.8 s like this).
        F.when(F.size("_keys") > non_null, F.array_except("_keys", known)).alias("_unknown"),
    )


def _field_stats(parsed: DataFrame, fields: dict[str, str]) -> tuple[int, dict[str, int], tuple[str, ...]]:
    """One pass: input rows, unknown-field row counts, contract fields seen at least once."""
    from pyspark.sql import functions as F

    aggs = [F.count(F.lit(1)).alias("__n")] + [F.count(F.col(n)).alias(n) for n in fields]
    row = parsed.agg(*aggs).first()
    n = int(row["__n"]) if row else 0
    present = tuple(f for f in fields if row and row[f] > 0)
    unknown: dict[str, int] = {}
    for r in (parsed.where(F.size("_unknown") > 0)
              .select(F.explode("_unknown").alias("k")).groupBy("k").agg(F.count(F.lit(1)).alias("n"))
              .collect()):
        # a key can itself be personal data ({"bob@example.com": 1}): the names go to the
        # reconciliation record and the logs masked
        name = mask_text_py(r["k"]) or ""
        unknown[name] = unknown.get(name, 0) + int(r["n"])
    return n, unknown, present


def _first_reason(rules: list[tuple[str, Column]]) -> Column:
    from pyspark.sql import functions as F

    out = None
    for reason, cond in reversed(rules):
        out = F.when(cond, F.lit(reason)).otherwise(out if out is not None else F.lit(None).cast("string"))
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------- catalog

def classify_catalog(parsed: DataFrame) -> DataFrame:
    """Normalize text, mark exact duplicates (``_dup``) and the quarantine ``reason``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    levels = F.filter(
        F.transform(F.split(F.coalesce(F.col("category_path"), F.lit("")), ">"), lambda x: F.trim(x)),
        lambda x: F.length(x) > 0,
    )
    df = parsed.select(
        clean_text("item_id").alias("item_id"),
        clean_text("title").alias("title"),
        clean_text("description").alias("description"),
        F.when(F.size(levels) > 0, F.array_join(levels, S.CATEGORY_SEP)).alias("category_path"),
        clean_text("brand").alias("brand"),
        F.col("price"),
        F.col("in_stock"),
        F.col("created_at").alias("created_at_raw"),
        parse_utc_timestamp("created_at").alias("created_at"),
        "_malformed", "_bad", "raw_line", "_hash",
    )
    content = ["item_id", "title", "description", "category_path", "brand", "price", "in_stock",
               "created_at"]
    df = df.withColumn("_content_hash", F.xxhash64(*content))
    parsable = ~F.col("_malformed") & F.col("_bad").isNull()
    exact = Window.partitionBy(*content).orderBy(parsable.desc(), "_hash")
    df = df.withColumn(
        "_dup", F.when(parsable, F.row_number().over(exact) > 1).otherwise(F.lit(False))
    )
    valid = (parsable & ~F.col("_dup") & F.col("item_id").isNotNull()
             & F.col("title").isNotNull() & ~(F.coalesce(F.col("price") < 0, F.lit(False)) | F.isnan("price")))
    # valid rows first: only they compete for the item_id (dups/invalid rows share the partition)
    newest = Window.partitionBy("item_id").orderBy(
        valid.desc(), F.col("created_at").desc_nulls_last(), F.col("_content_hash").desc()
    )
    df = df.withColumn("_rank", F.when(valid, F.row_number().over(newest)))
    reason = _first_reason([
        *[(r, F.col("_bad") == r) for r in LINE_RULES],
        (S.REASON_MALFORMED, F.col("_malformed")),
        (S.REASON_MISSING_REQUIRED, F.col("item_id").isNull()),
        (S.REASON_MISSING_TITLE, F.col("title").isNull()),
        (S.REASON_BAD_PRICE, F.coalesce(F.col("price") < 0, F.lit(False)) | F.isnan("price")),
        (S.REASON_DUPLICATE_ITEM, F.col("_rank") > 1),
    ])
    return df.withColumn("reason", F.when(~F.col("_dup"), reason))


def catalog_outputs(classified: DataFrame) -> tuple[DataFrame, DataFrame, DataFrame]:
    """(clean catalog, quarantined catalog, its raw lines for ``quarantine_raw``) from
    :func:`classify_catalog`'s output (parsed with every raw line kept)."""
    from pyspark.sql import functions as F

    keep = classified.where(~F.col("_dup"))
    clean = keep.where(F.col("reason").isNull()).select(
        *[
            F.element_at(F.split("category_path", S.CATEGORY_SEP), 1).alias("category")
            if c == "category" else F.col(c)
            for c in S.CLEAN_CATALOG_COLUMNS
        ]
    )
    rejected = keep.where(F.col("reason").isNotNull())
    quarantine = rejected.select(
        *[F.col("created_at_raw").alias("created_at") if c == "created_at"
          else mask_line_col("raw_line").alias(c) if c == "masked_line" else F.col(c)
          for c in QUARANTINE_CATALOG_COLUMNS]
    )
    raw = rejected.select(
        "item_id", "reason", F.col("raw_line").cast("binary").alias("raw_line"),
        F.lit(True).alias("line_is_original"),
    )
    return clean, quarantine, raw


# ----------------------------------------------------------------------------- events

NORM_PREFIX = "_n_"  # normalized copies of raw event fields, beside the raw ones
# unrolled and possessive, like the masking patterns: linear, no stack growth on long lines
# The closing quote is required: a line cut inside the id holds a fragment of it, which may
# be another user's whole id (u12 -> u1); such a line names no user.
USER_IN_LINE = '(?<!\\\\)"user_id"[ \\t\\r\\n]*:[ \\t\\r\\n]*"([^"\\\\]*+(?:\\\\.[^"\\\\]*+)*+)"'


def _normalized_event_fields() -> dict[str, Column]:
    """Raw event field -> its normalized value (trimmed ids, lower/upper-cased codes, UTC time)."""
    from pyspark.sql import functions as F

    # A malformed line's user is still found when its text shows one: its quarantined row then
    # carries a user_key (an erasure request can find it) and its masked line the pseudonym.
    line_user = F.when(F.col("user_id").isNull() & F.col("raw_line").isNotNull(),
                       F.regexp_extract("raw_line", USER_IN_LINE, 1))
    return {
        "event_id": clean_text("event_id"),
        "event_time": parse_utc_timestamp(F.trim("event_time")),
        "user_id": clean_text(F.coalesce(F.col("user_id"), line_user)),
        "session_id": clean_text("session_id"),
        "event_type": F.lower(clean_text("event_type")),
        "item_id": clean_text("item_id"),
        "device": F.lower(clean_text("device")),
        "country": F.upper(clean_text("country")),
    }


def normalize_events(parsed: DataFrame) -> DataFrame:
    """:func:`_parse` output plus ``_n_<field>``, the normalized value of each field that has one
    (a frame that already has them is returned as it is).

    The raw fields stay (the raw suite and the quarantine read them). Caching this frame once
    lets every later pass (dedupe, bot aggregate, user and query tables, the rules) read the
    normalized values instead of recomputing them or materializing a second copy of the day
    (``run_clean`` of a warm 1M-event day: 23.5 s mean against 28.0 s with the normalization
    in a separate checkpoint, six runs each; identical rows).
    """
    if NORM_PREFIX + "event_id" in parsed.columns:  # already normalized: keep its cache
        return parsed
    return parsed.select("*", *[c.alias(NORM_PREFIX + n) for n, c in _normalized_event_fields().items()])


def classify_events(
    parsed: DataFrame, catalog_items: DataFrame, ds: str, cfg: EcrecConfig
) -> DataFrame:
    """Trim ids, parse time, mark duplicates (``_dup``) and the quarantine ``reason``.

    ``parsed`` is :func:`normalize_events`' output (cache it: every branch reads it) or plain
    :func:`_parse` output (normalized here). ``catalog_items`` has one column ``item_id`` (the
    day's clean catalog).
    """
    import datetime as dt

    from pyspark.sql import functions as F

    day = dt.datetime.combine(parse_ds(ds), dt.time())
    tol = dt.timedelta(hours=cfg.late_tolerance_hours)
    start, end = day - tol, day + dt.timedelta(days=1) + tol

    parsed = normalize_events(parsed)
    norm = lambda n: F.col(NORM_PREFIX + n).alias(n)  # noqa: E731
    df = parsed.select(
        norm("event_id"),
        F.col("event_time").alias("event_time_raw"),
        norm("event_time"),
        norm("user_id"),
        norm("session_id"),
        norm("event_type"),
        norm("item_id"),
        F.col("query"),
        F.col("position"),
        F.col("price"),
        F.col("quantity"),
        norm("device"),
        norm("country"),
        "_malformed", "_bad", "_hash", "_row",
    )
    # Duplicates: among the parsable rows of an event_id, the one with the smallest line hash is
    # kept (identical lines: any one, they are the same row). Only the ids seen more than once
    # (a small table) are joined back, so the day's rows are not shuffled and sorted by
    # event_id; a malformed, partly parsed copy never takes part, so it cannot displace the
    # good one.
    dedupable = ~F.col("_malformed") & F.col("_bad").isNull() & F.col("event_id").isNotNull()
    repeated = (
        df.where(dedupable).groupBy("event_id")
        .agg(F.count(F.lit(1)).alias("_copies"), F.min_by("_row", "_hash").alias("_keep"))
        .where(F.col("_copies") > 1).select(F.col("event_id").alias("_dup_id"), "_keep")
        .localCheckpoint(eager=True)
    )
    if repeated.count() <= BROADCAST_MAX_IDS:  # the usual case: a few duplicated ids
        repeated = F.broadcast(repeated)
    df = df.join(repeated, F.col("event_id") == F.col("_dup_id"), "left")
    df = df.withColumn("_dup", dedupable & F.coalesce(F.col("_row") != F.col("_keep"), F.lit(False)))
    df = df.drop("_dup_id", "_keep")  # _row stays: event_outputs finds quarantined lines by it

    missing_required = (
        F.col("event_id").isNull() | F.col("event_time_raw").isNull() | F.col("session_id").isNull()
        | F.col("event_type").isNull()
        | (F.col("event_type").isin(*S.ITEM_EVENT_TYPES) & F.col("item_id").isNull())
        | ((F.col("event_type") == "search") & clean_text("query").isNull())
    )
    pre_bot = [
        *[(r, F.col("_bad") == r) for r in LINE_RULES],
        (S.REASON_MALFORMED, F.col("_malformed")),
        (S.REASON_MISSING_USER, F.col("user_id").isNull()),
        (S.REASON_MISSING_REQUIRED, missing_required),
        (S.REASON_BAD_TIME, F.col("event_time").isNull()),
        (S.REASON_BAD_TIMESTAMP, ~F.trim("event_time_raw").rlike(TIME_WITH_OFFSET)),
    ]
    # The bot aggregate and the main branch both read these rows: from the cached normalized
    # parse, so neither recomputes the normalization and no second copy of the day is made.
    df = df.withColumn("_pre", _first_reason(pre_bot))

    limit = cfg.bot_max_events_per_minute
    bots = (
        df.where(~F.col("_dup") & F.col("_pre").isNull())
        .groupBy("user_id", F.date_trunc("minute", "event_time").alias("minute"))
        .agg(F.count(F.lit(1)).alias("n"))
        .where(F.col("n") > limit)
        .select("user_id").distinct()
        .withColumn("_bot", F.lit(True))
    )
    items = catalog_items.select(F.col("item_id").alias("_known_item")).distinct()
    df = (
        df.join(F.broadcast(bots), "user_id", "left")
        .join(F.broadcast(items), F.col("item_id") == F.col("_known_item"), "left")
    )
    not_null_true = lambda c: F.coalesce(c, F.lit(False))  # noqa: E731 - null-safe predicate
    reason = _first_reason([
        *pre_bot,
        (S.REASON_BOT, F.col("_bot").isNotNull()),
        (S.REASON_BAD_EVENT_TYPE, ~F.col("event_type").isin(*S.EVENT_TYPES)),
        (S.REASON_NEGATIVE_PRICE, not_null_true(F.col("price") < 0) | F.isnan("price")),
        (S.REASON_BAD_QUANTITY, F.col("event_type").isin("add_to_cart", "purchase")
         & not_null_true(F.col("quantity") <= 0)),
        (S.REASON_OUT_OF_WINDOW, (F.col("event_time") < F.lit(start)) | (F.col("event_time") >= F.lit(end))),
        (S.REASON_UNKNOWN_ITEM, F.col("item_id").isNotNull() & F.col("_known_item").isNull()),
    ])
    return df.withColumn("reason", F.when(~F.col("_dup"), reason)).drop(
        "_pre", "_bot", "_known_item", "_bad"
    )


def key_events(classified: DataFrame, key: bytes, parsed: DataFrame | None = None) -> DataFrame:
    """All rows (``_dup`` and ``reason`` kept) with ``user_key`` (HMAC; ``user_id`` dropped),
    ``event_id`` and ``session_id`` replaced by their keyed pseudonyms (the dedupe already ran
    on the raw ids) and ``query_norm`` (normalized query, then masked by pattern).

    Both UDFs run once per *distinct* value inside this one plan, so persisting its result lets
    the reason counts, the clean and the quarantine writes share a single evaluation. With
    ``parsed`` (the cached :func:`normalize_events` output ``classified`` comes from), the
    distinct user ids and queries are listed from it instead of from ``classified``: otherwise
    the whole classification plan (dedupe, bot aggregate, joins) runs once more per lookup table.
    """
    from pyspark.sql import functions as F

    ids = queries = None
    if parsed is not None:
        parsed = normalize_events(parsed)
        ids = parsed.select(F.col(NORM_PREFIX + "user_id").alias("user_id"))
        queries = parsed.select("query")
    keyed = key_ids(add_user_key(classified, key, ids=ids, materialize=parsed is not None)
                    .drop("user_id"), key)
    keyed = normalize_queries(keyed.withColumn("query_norm", F.col("query")), "query_norm",
                              values=queries)
    # masked after normalization: NFKC turns full-width digits and @ into the ASCII ones
    return keyed.withColumn("query_norm", mask_text_col("query_norm"))


def event_outputs(classified: DataFrame, parsed: DataFrame, key: bytes | None = None,
                  broadcast_quarantine: bool = True) -> tuple[DataFrame, DataFrame, DataFrame]:
    """(clean events, quarantined events, their raw lines for ``quarantine_raw``).

    Clean and quarantine are pseudonymized with PII and unknown fields dropped; quarantine
    keeps the raw query masked by pattern and a masked line. ``classified`` is
    :func:`classify_events`' output (then ``key`` is required) or, already keyed,
    :func:`key_events`' output (``key=None``); ``parsed`` is the parse it came from, where each
    quarantined row's line is looked up by ``_row``: the kept raw line, or the raw contract
    fields re-serialized as JSON for a line that parsed (only quarantined rows are looked up, so
    the day's cached rows never carry a second copy of their text). ``broadcast_quarantine``:
    the quarantined rows are few enough to broadcast to that lookup.
    """
    from pyspark.sql import functions as F

    keyed = key_events(classified, key) if key is not None else classified
    clean = keyed.where(~F.col("_dup") & F.col("reason").isNull()).select(
        *[F.col("query_norm").alias("query") if c == "query" else F.col(c)
          for c in S.CLEAN_EVENT_COLUMNS]
    )
    rejected = keyed.where(F.col("reason").isNotNull()).select(
        *[F.col("event_time_raw").alias("event_time") if c == "event_time"
          else mask_text_col("query").alias("query") if c == "query" else F.col(c)
          for c in QUARANTINE_EVENT_COLUMNS if c != "masked_line"],
        "_row",
    )
    if broadcast_quarantine:
        rejected = F.broadcast(rejected)
    raw_fields = [c for c in S.RAW_EVENT_FIELDS]
    lines = parsed.select(F.col("_row").alias("_line_row"), "raw_line",
                          *[F.col(c).alias(f"_raw_{c}") for c in raw_fields])
    joined = rejected.join(lines, F.col("_row") == F.col("_line_row"), "left")
    original = F.col("raw_line").isNotNull()
    line = F.when(original, F.col("raw_line")).otherwise(
        F.to_json(F.struct(*[F.col(f"_raw_{c}").alias(c) for c in raw_fields]))
    )
    joined = joined.withColumn("_line", line).withColumn("_original", original)
    quarantine = joined.select(
        *[mask_line_col("_line", {"user_id": F.col("user_key"), "session_id": F.col("session_id"),
                                  "event_id": F.col("event_id")}).alias(c)
          if c == "masked_line" else F.col(c) for c in QUARANTINE_EVENT_COLUMNS]
    )
    raw = joined.select(
        "event_id", "user_key", "reason", F.col("_line").cast("binary").alias("raw_line"),
        F.col("_original").alias("line_is_original"),
    )
    return clean, quarantine, raw


# ----------------------------------------------------------------------------- job logic

def _reason_counts(classified: DataFrame) -> tuple[int, dict[str, int]]:
    """(duplicates, quarantined rows per reason) in one pass over the cached rows."""
    from pyspark.sql import functions as F

    rows = classified.groupBy("_dup", "reason").agg(F.count(F.lit(1)).alias("n")).collect()
    dups = sum(int(r["n"]) for r in rows if r["_dup"])
    by_reason = {r["reason"]: int(r["n"]) for r in rows if not r["_dup"] and r["reason"] is not None}
    return dups, by_reason


def _reconcile(spark: SparkSession, lake: Lake, dataset: str, ds: str, input_rows: int,
               dups: int, by_reason: dict[str, int], unknown: dict[str, int],
               run_id: str) -> Reconciliation:
    """Count what was actually staged and check the reconciliation equation."""
    # from the staged files' Parquet footers: what was really written, without a Spark job
    clean_n = io.count_parquet_rows(spark, io.staging_path(lake.clean(dataset, ds), run_id)) or 0
    quarantine_n = io.count_parquet_rows(spark, io.staging_path(lake.quarantine(dataset, ds), run_id)) or 0
    raw_n = io.count_parquet_rows(spark, io.staging_path(lake.quarantine_raw(dataset, ds), run_id)) or 0
    rec = Reconciliation(dataset, ds, input_rows, clean_n, quarantine_n, dups, by_reason, unknown)
    # every quarantined row has exactly one raw line in the restricted zone
    if quarantine_n != sum(by_reason.values()) or raw_n != quarantine_n:
        rec.status = "unbalanced"
    if not rec.balanced or rec.status == "unbalanced":
        rec.status = "unbalanced"
        io.write_json(spark, f"{lake.ops('reconciliation', ds)}/{dataset}.json", rec.to_dict())
        raise ReconciliationError(
            f"{dataset} ds={ds}: input {input_rows} != clean {clean_n} + quarantined {quarantine_n} "
            f"+ duplicates {dups} (per reason {by_reason}; raw lines kept {raw_n}); nothing "
            "published -- this is a bug in the cleaning rules, see ops/reconciliation"
        )
    return rec


def _prev_rows(spark: SparkSession, lake: Lake, stage: str, name: str, ds: str) -> int | None:
    import datetime as dt

    prev = (parse_ds(ds) - dt.timedelta(days=1)).isoformat()
    return io.count_parquet_rows(spark, lake.partition(stage, name, prev))


def _validate_staged(spark: SparkSession, lake: Lake, suite_name: str, final_path: str, ds: str,
                     ctx_kwargs: dict[str, Any], run_id: str) -> None:
    from ecrec_lib.validation import validate
    from expectations import SUITES, SuiteContext

    staged = spark.read.parquet(io.staging_path(final_path, run_id))
    suite = SUITES[suite_name](SuiteContext(ds=ds, **ctx_kwargs))
    validate(spark, staged, suite, suite_name, ds, f"{lake.ops('validation', ds)}/{suite_name}")


def _validate_raw(spark: SparkSession, lake: Lake, parsed: DataFrame, present: tuple[str, ...],
                  ds: str, common: dict[str, Any]) -> None:
    """Raw suite on the parsable rows, restricted to the contract fields seen in the raw lines.

    Skipped when no line parses at all (pure garbage): the clean suite's minimum-rows
    expectation then fails with observed=0, and every line sits in quarantine as malformed.
    """
    from pyspark.sql import functions as F

    from ecrec_lib.validation import validate
    from expectations import SUITES, SuiteContext

    if not present:
        log.error("events ds=%s: no raw line parses as a JSON object; raw suite skipped", ds)
        return
    # Its results land in ops/ (readable beyond the restricted zones): sample values of raw
    # ids and PII are redacted, the rest masked by pattern (ecrec_lib.validation).
    validate(
        spark, parsed.where(~F.col("_malformed") & F.col("_bad").isNull()).select(*present),
        SUITES["raw_events"](SuiteContext(ds=ds, present_columns=present, **common)),
        "raw_events", ds, f"{lake.ops('validation', ds)}/raw_events",
        redact_columns=RAW_REDACTED_COLUMNS,
    )


class _Phases:
    """Wall time per phase of one job, logged at the end (where the time goes, for tuning)."""

    def __init__(self, what: str) -> None:
        import time

        self.what, self._clock = what, time.perf_counter
        self.t0 = self.last = self._clock()
        self.times: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        now = self._clock()
        self.times[phase] = round(now - self.last, 2)
        self.last = now

    def log(self) -> None:
        log.info("%s: %.1f s %s", self.what, self._clock() - self.t0, self.times)


def run_clean(spark: SparkSession, cfg: EcrecConfig, ds: str, key: bytes | None = None,
              run_id: str | None = None) -> CleanResult:
    """Clean the catalog snapshot and the events of ``ds``; publish only what passes its suite.

    Raises :class:`~ecrec_lib.pipeline.io.InputMissingError` (raw partition absent),
    :class:`~ecrec_lib.validation.DataContractError` (critical expectation failed; quarantine and
    reconciliation are still published because they are what an operator inspects) and
    :class:`ReconciliationError`. An empty events partition returns ``no_data=True`` after writing
    ``ops/reconciliation/ds=D/events.json`` with ``"status": "no_data"``.

    Spark actions per dataset (the cost on small clusters is per job, not per row): the parsed
    lines are cached once (events with their normalized fields beside the raw ones); one
    aggregate gives input rows + field presence, one the unknown fields; the classified +
    pseudonymized rows are cached once and feed one reason-count aggregate and the clean and
    quarantine writes; staged row counts come from Parquet footers.
    The events are parsed and counted on a second thread while the catalog is cleaned (the
    catalog's many small jobs leave cores idle); only their classification needs the catalog.

    The job holds the single-writer lock of its six partitions throughout and stages under
    ``run_id`` (default: a fresh one); :class:`~ecrec_lib.partitions.PartitionLocked` when
    another writer holds one of them.
    """
    parse_ds(ds)
    lake = Lake(cfg.lake_root)
    key = key if key is not None else resolve_pseudonymization_key()
    run_id = run_id or partitions.new_run_id()
    # one writer per partition for the whole write-validate-publish span (a retry beside a
    # stray run, a manual run): the second one fails naming the first
    outputs = [lake.partition(stage, name, ds)
               for stage in ("clean", "quarantine", "quarantine_raw")
               for name in ("catalog", "events")]
    with partitions.partition_locks(outputs, run_id):
        return _run_clean(spark, cfg, ds, key, lake, run_id)


def _run_clean(spark: SparkSession, cfg: EcrecConfig, ds: str, key: bytes, lake: Lake,
               run_id: str) -> CleanResult:
    common = {"volume_drop_fraction": cfg.volume_drop_fraction,
              "late_tolerance_hours": cfg.late_tolerance_hours}
    phases = _Phases(f"clean ds={ds}")
    cat_path = lake.raw("catalog", ds)
    if not io.path_exists(spark, cat_path):
        raise io.InputMissingError(
            f"catalog snapshot {cat_path} does not exist: events of ds={ds} cannot be checked "
            f"against known items. Land the day's catalog there (gzipped JSON lines with fields "
            f"{list(S.RAW_CATALOG_FIELDS)}) or copy the previous day's snapshot, then re-run"
        )
    # a second thread parses the events beside the catalog; the raw suite runs on it later
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"clean-{ds}") as pool:
        events_parse = pool.submit(_parse_events, spark, lake, ds)
        try:
            cat_rec = _clean_catalog(spark, cfg, ds, lake, common, phases, run_id)
            ev_parsed, (n, unknown, present) = events_parse.result()
        except BaseException:
            # never leave a parsed day cached behind a failed catalog
            wait([events_parse])
            if events_parse.exception() is None:
                events_parse.result()[0].unpersist()
            raise
        phases.mark("events_parse_stats")
        return _clean_events(spark, cfg, ds, key, lake, common, phases, pool, cat_rec, ev_parsed,
                             n, unknown, present, run_id)


def _parse_events(
    spark: SparkSession, lake: Lake, ds: str
) -> tuple[DataFrame, tuple[int, dict[str, int], tuple[str, ...]]]:
    """The day's raw events parsed, normalized (:func:`normalize_events`) and cached, with their
    :func:`_field_stats`."""
    from pyspark import StorageLevel

    parsed = normalize_events(_parse(spark, lake.raw("events", ds), S.RAW_EVENT_FIELDS, "events")).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    try:
        return parsed, _field_stats(parsed, S.RAW_EVENT_FIELDS)
    except BaseException:
        parsed.unpersist()
        raise


def _clean_catalog(spark: SparkSession, cfg: EcrecConfig, ds: str, lake: Lake,
                   common: dict[str, Any], phases: _Phases, run_id: str) -> Reconciliation:
    from pyspark import StorageLevel

    from ecrec_lib.validation import DataContractError

    cat_path = lake.raw("catalog", ds)
    cat_parsed = _parse(spark, cat_path, S.RAW_CATALOG_FIELDS, "catalog", keep_all_lines=True).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    cat_rows = classify_catalog(cat_parsed).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        cat_n, cat_unknown, _ = _field_stats(cat_parsed, S.RAW_CATALOG_FIELDS)
        if cat_n == 0:
            raise io.InputMissingError(
                f"catalog snapshot {cat_path} is empty; land a non-empty snapshot and re-run"
            )
        dups, by_reason = _reason_counts(cat_rows)
        cat_clean, cat_quarantine, cat_raw = catalog_outputs(cat_rows)
        io.write_staged(cat_clean, lake.clean("catalog", ds), run_id, n_files=1)
        io.write_staged(cat_quarantine, lake.quarantine("catalog", ds), run_id, n_files=1)
        io.write_staged(cat_raw, lake.quarantine_raw("catalog", ds), run_id, n_files=1)
        phases.mark("catalog_classify_write")
        cat_rec = _reconcile(spark, lake, "catalog", ds, cat_n, dups, by_reason, cat_unknown,
                             run_id)
        io.write_json(spark, f"{lake.ops('reconciliation', ds)}/catalog.json", cat_rec.to_dict())
        io.publish(spark, lake.quarantine_raw("catalog", ds), run_id)
        io.publish(spark, lake.quarantine("catalog", ds), run_id)
        try:
            _validate_staged(spark, lake, "catalog", lake.clean("catalog", ds), ds, {
                **common, "prev_rows": _prev_rows(spark, lake, "clean", "catalog", ds),
                "min_rows": 1,
            }, run_id)
        except DataContractError:
            io.discard_staged(spark, lake.clean("catalog", ds), run_id)
            raise
        io.publish(spark, lake.clean("catalog", ds), run_id)
        phases.mark("catalog_gx_publish")
    finally:
        cat_rows.unpersist()
        cat_parsed.unpersist()
    log.info("catalog ds=%s: %s", ds, cat_rec.to_dict())
    return cat_rec


def _clean_events(spark: SparkSession, cfg: EcrecConfig, ds: str, key: bytes, lake: Lake,
                  common: dict[str, Any], phases: _Phases, pool: ThreadPoolExecutor,
                  cat_rec: Reconciliation, ev_parsed: DataFrame, n: int, unknown: dict[str, int],
                  present: tuple[str, ...], run_id: str) -> CleanResult:
    from pyspark import StorageLevel

    from ecrec_lib.validation import DataContractError

    raw_check: Future[None] | None = None
    try:
        if n == 0:
            rec = Reconciliation("events", ds, 0, 0, 0, 0, {}, unknown, status="no_data")
            io.write_json(spark, f"{lake.ops('reconciliation', ds)}/events.json", rec.to_dict())
            log.warning("raw events partition %s holds no line: status=no_data", lake.raw("events", ds))
            return CleanResult(ds, rec, cat_rec, no_data=True)
        if unknown:
            log.warning("events ds=%s: unknown raw fields dropped: %s", ds, unknown)
        # The raw suite only reads the cached parsed lines: run it beside the classification
        # (GX's driver-side Python overlaps the Spark jobs); its verdict is awaited below, at
        # the same point of the publishing protocol as before.
        raw_check = pool.submit(_validate_raw, spark, lake, ev_parsed, present, ds, common)
        catalog_items = spark.read.parquet(lake.clean("catalog", ds)).select("item_id")
        keyed = key_events(classify_events(ev_parsed, catalog_items, ds, cfg), key, ev_parsed).persist(
            StorageLevel.MEMORY_AND_DISK
        )
        try:
            dups, by_reason = _reason_counts(keyed)  # materializes the cache
            phases.mark("events_classify")
            clean, quarantine, quarantine_raw = event_outputs(
                keyed, ev_parsed, broadcast_quarantine=sum(by_reason.values()) <= BROADCAST_MAX_IDS
            )
            io.write_staged(clean, lake.clean("events", ds), run_id,
                            n_files=max(1, min(spark.sparkContext.defaultParallelism,
                                               math.ceil(n / 250_000))))
            io.write_staged(quarantine, lake.quarantine("events", ds), run_id, n_files=1)
            io.write_staged(quarantine_raw, lake.quarantine_raw("events", ds), run_id, n_files=1)
            phases.mark("events_write")
        finally:
            keyed.unpersist()
        rec = _reconcile(spark, lake, "events", ds, n, dups, by_reason, unknown, run_id)
        io.write_json(spark, f"{lake.ops('reconciliation', ds)}/events.json", rec.to_dict())
        # the restricted copy first: a kill between the two never leaves a quarantined row
        # whose raw line is lost
        io.publish(spark, lake.quarantine_raw("events", ds), run_id)
        io.publish(spark, lake.quarantine("events", ds), run_id)
        try:
            raw_check.result()
            phases.mark("events_gx_raw_wait")
            _validate_staged(spark, lake, "clean_events", lake.clean("events", ds), ds, {
                **common, "prev_rows": _prev_rows(spark, lake, "clean", "events", ds),
                "min_rows": max(1, math.ceil(n * cfg.min_clean_fraction)),
            }, run_id)
            phases.mark("events_gx_clean")
        except DataContractError:
            io.discard_staged(spark, lake.clean("events", ds), run_id)
            raise
        io.publish(spark, lake.clean("events", ds), run_id)
    finally:
        if raw_check is not None and not raw_check.done():
            wait([raw_check])  # never unpersist under a running suite
        ev_parsed.unpersist()
    log.info("events ds=%s: %s", ds, rec.to_dict())
    phases.log()
    return CleanResult(ds, rec, cat_rec)
