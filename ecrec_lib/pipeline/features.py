"""Feature tables from the clean partitions of a lookback window ending at ``ds``.

All tables only reference items of the ds clean catalog (events on other items are ignored).
Works on purchase-only data without sessions, queries or prices (e.g. real Amazon reviews):
rates fall back to their smoothed priors, ``search_pairs`` is empty with the right schema and
``price_band`` is null.

* ``user_sequences``   last ``cfg.max_seq_len`` item events per user, oldest first (ties broken
                       by event_id), with n_events, last_event_time and the latest country/device.
* ``item_stats``       one row per catalog item: counts per event type; ``ctr`` =
                       (clicks + a*p_ctr)/(views + a) and ``cvr`` = (min(purchases, clicks)
                       + a*p_cvr)/(clicks + a) (purchases without a click, as in purchase-only
                       data, do not push it above 1: such items get the prior), a = ``cfg.smoothing_prior_weight``, global priors p (0 when
                       the denominator is 0 everywhere), clipped to [0, 1]; ``popularity`` =
                       sum over item events of 0.5 ** (age_days / ``cfg.popularity_half_life_days``)
                       at the end of ds; ``trending_score`` = (events on ds + 1) / (mean daily
                       events over the days present in the window + 1).
* ``user_profiles``    recency (days from the last event to the end of ds), frequency (distinct
                       sessions), monetary (sum of purchase price * quantity, quantity 1 when
                       null), category/brand affinity (share of item events), top category
                       (ties: alphabetical), price band of the user's mean catalog price vs. the
                       catalog price terciles.
* ``search_pairs``     each click/purchase is attributed to the latest search earlier in the same
                       (user, session); counts per (normalized query, item). Only k-anonymous
                       queries: issued by at least ``cfg.min_query_users`` distinct users in the
                       window and not shaped like an email, IP, phone or card number
                       (:mod:`ecrec_lib.privacy.queries`); what was held back is counted in
                       ``ops/privacy/ds=D/search_queries.json`` (counts only, never a query).
* ``item_cooccurrence`` items at most ``COOC_WINDOW`` steps apart in a user's sequence (the
                       user_sequences arrays: sessions are unreliable on real data), symmetric
                       counts, top ``cfg.max_cooccurrence_per_item`` partners per item.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ecrec_lib import partitions
from ecrec_lib import schema as S
from ecrec_lib.config import EcrecConfig
from ecrec_lib.lake import FEATURES, Lake, ds_range, parse_ds
from ecrec_lib.pipeline import io
from ecrec_lib.privacy import queries as Q

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

COOC_WINDOW = 3  # pair items at most this many steps apart in a user's sequence
TRENDING_PSEUDO_COUNT = 1.0  # events/day added to both sides of the trending ratio
QUERY_PRIVACY_FILE = "search_queries.json"  # under ops/privacy/ds=D/


@dataclass
class FeatureResult:
    ds: str
    days_present: list[str]
    days_missing: list[str]
    row_counts: dict[str, int] = field(default_factory=dict)
    query_privacy: dict[str, Any] = field(default_factory=dict)


def _end_of_day(ds: str) -> dt.datetime:
    return dt.datetime.combine(parse_ds(ds) + dt.timedelta(days=1), dt.time())


def item_events(events: DataFrame, catalog: DataFrame) -> DataFrame:
    """Item events on catalog items, with the item's category, brand and catalog price."""
    from pyspark.sql import functions as F

    cat = catalog.select("item_id", "category", "brand", F.col("price").alias("catalog_price"))
    return (
        events.where(F.col("event_type").isin(*S.ITEM_EVENT_TYPES) & F.col("item_id").isNotNull())
        .join(F.broadcast(cat), "item_id", "inner")
    )


def user_sequences(items: DataFrame, max_seq_len: int) -> DataFrame:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    # One window sort and one aggregate: each user's events are numbered newest first, every
    # event counts towards n_events and the last event time, and only the newest max_seq_len
    # are collected (collect_list skips the nulls of the others). Collecting every event of
    # heavy users held whole histories in the aggregation buffers and ran the driver out of
    # heap at 4M events. The newest event (row 1) gives the latest country and device. A
    # separate per-user aggregate joined back took 7.3 s against 5.0 s for this (4M events,
    # 163k users, warm; identical rows).
    newest_first = Window.partitionBy("user_key").orderBy(
        F.col("event_time").desc(), F.col("event_id").desc()
    )  # the reverse of the sort_array below, so exactly its last max_seq_len are collected
    rn = F.col("_rn")
    newest = lambda c: F.max(F.when(rn == 1, F.col(c)))  # noqa: E731 - value of row 1
    seq = items.withColumn("_rn", F.row_number().over(newest_first)).groupBy("user_key").agg(
        F.count(F.lit(1)).cast("long").alias("n_events"),
        F.max("event_time").alias("last_event_time"),
        newest("country").alias("country"),
        newest("device").alias("device"),
        F.sort_array(F.collect_list(F.when(rn <= max_seq_len, F.struct(
            F.col("event_time").alias("t"), F.col("event_id").alias("e"),
            F.col("item_id").alias("i"), F.col("event_type").alias("y"),
        )))).alias("seq"),
    )
    return seq.select(
        "user_key",
        F.col("seq.i").alias("item_ids"),
        F.col("seq.y").alias("event_types"),
        F.transform("seq", lambda x: F.unix_timestamp(x["t"])).alias("event_times"),
        "n_events", "last_event_time", "country", "device",
    )


def item_stats(items: DataFrame, catalog: DataFrame, ds: str, days_present: int,
               cfg: EcrecConfig) -> DataFrame:
    from pyspark.sql import functions as F

    end = _end_of_day(ds)
    day_start = end - dt.timedelta(days=1)
    age_days = (F.lit(end).cast("long") - F.col("event_time").cast("long")) / 86400.0
    counts = items.groupBy("item_id").agg(
        *[F.count(F.when(F.col("event_type") == t, 1)).alias(name) for t, name in
          (("view", "views"), ("click", "clicks"), ("add_to_cart", "add_to_carts"),
           ("purchase", "purchases"))],
        F.sum(F.pow(F.lit(0.5), age_days / cfg.popularity_half_life_days)).alias("popularity"),
        F.count(F.when(F.col("event_time") >= F.lit(day_start), 1)).alias("_last_day"),
        F.count(F.lit(1)).alias("_total"),
    )
    tot = counts.agg(*[F.sum(c).alias(c) for c in ("views", "clicks", "purchases")]).first()
    views, clicks, purchases = (int((tot[c] if tot else 0) or 0) for c in ("views", "clicks", "purchases"))
    p_ctr = min(1.0, clicks / views) if views else 0.0
    p_cvr = min(1.0, purchases / clicks) if clicks else 0.0
    a = float(cfg.smoothing_prior_weight)
    k = TRENDING_PSEUDO_COUNT
    df = catalog.select("item_id").join(counts, "item_id", "left").fillna(
        0, subset=["views", "clicks", "add_to_carts", "purchases", "_last_day", "_total"]
    ).fillna(0.0, subset=["popularity"])
    clip = lambda c: F.least(F.lit(1.0), F.greatest(F.lit(0.0), c))  # noqa: E731
    return df.select(
        "item_id",
        *[F.col(c).cast("long").alias(c) for c in ("views", "clicks", "add_to_carts", "purchases")],
        clip((F.col("clicks") + a * p_ctr) / (F.col("views") + a)).alias("ctr"),
        clip((F.least("purchases", "clicks") + a * p_cvr) / (F.col("clicks") + a)).alias("cvr"),
        F.col("popularity").cast("double").alias("popularity"),
        ((F.col("_last_day") + k) / (F.col("_total") / float(max(days_present, 1)) + k)).alias("trending_score"),
    )


def user_profiles(events: DataFrame, items: DataFrame, catalog: DataFrame, ds: str) -> DataFrame:
    from pyspark.sql import functions as F

    end = _end_of_day(ds)
    base = events.groupBy("user_key").agg(
        ((F.lit(end).cast("long") - F.max("event_time").cast("long")) / 86400.0).alias("recency_days"),
        F.sum(F.when(F.col("event_type") == "purchase",
                     F.coalesce(F.col("price"), F.lit(0.0)) * F.coalesce(F.col("quantity"), F.lit(1))))
        .alias("monetary"),
        F.max_by("country", F.struct("event_time", "event_id")).alias("country"),
        F.max_by("device", F.struct("event_time", "event_id")).alias("device"),
    ).fillna(0.0, subset=["monetary"])
    # Distinct sessions as their own aggregate, joined back: a count(DISTINCT) beside the other
    # aggregates makes Spark expand every event row once per aggregate group and aggregate
    # twice. The events are hash-partitioned by user, so neither step nor the join shuffles.
    sessions = (
        events.where(F.col("session_id").isNotNull()).select("user_key", "session_id").distinct()
        .groupBy("user_key").agg(F.count(F.lit(1)).cast("long").alias("frequency"))
    )
    base = base.join(sessions, "user_key", "left").fillna(0, subset=["frequency"])

    def affinity(col: str, out: str) -> DataFrame:
        per = items.where(F.col(col).isNotNull()).groupBy("user_key", col).agg(F.count(F.lit(1)).alias("n"))
        return per.groupBy("user_key").agg(
            F.map_from_entries(F.collect_list(F.struct(col, F.col("n").cast("double")))).alias("_m"),
            F.sum("n").alias("_tot"),
            F.array_min(F.collect_list(F.struct((-F.col("n")).alias("neg"), F.col(col).alias("v"))))
            .alias("_top"),
        ).select(
            "user_key",
            F.transform_values("_m", lambda _k, v: v / F.col("_tot")).alias(out),
            F.col("_top.v").alias(f"_top_{col}"),
        )

    q = catalog.where(F.col("price").isNotNull()).agg(
        F.percentile_approx("price", [1 / 3, 2 / 3], 1000).alias("q")
    ).first()
    terciles = q["q"] if q and q["q"] else None
    mean_price = items.groupBy("user_key").agg(F.avg("catalog_price").alias("_p"))
    if terciles:
        band = (F.when(F.col("_p").isNull(), F.lit(None).cast("string"))
                .when(F.col("_p") <= terciles[0], "low").when(F.col("_p") <= terciles[1], "mid")
                .otherwise("high"))
    else:
        band = F.lit(None).cast("string")
    empty_map = F.create_map().cast("map<string,double>")
    return (
        base.join(affinity("category", "category_affinity"), "user_key", "left")
        .join(affinity("brand", "brand_affinity"), "user_key", "left")
        .join(mean_price, "user_key", "left")
        .select(
            "user_key", F.col("recency_days").cast("double").alias("recency_days"), "frequency",
            F.col("monetary").cast("double").alias("monetary"),
            F.coalesce("category_affinity", empty_map).alias("category_affinity"),
            F.coalesce("brand_affinity", empty_map).alias("brand_affinity"),
            F.col("_top_category").alias("top_category"), band.alias("price_band"), "country", "device",
        )
    )


def query_publication(events: DataFrame, min_users: int) -> DataFrame:
    """One row per distinct search query of ``events``: ``n_users`` (distinct users who issued
    it), ``n_searches`` and ``hold_back`` (null when the query may be published, else
    ``pii_<kind>`` or ``below_k``; the same rules as :func:`ecrec_lib.privacy.queries.hold_back_reason`)."""
    from pyspark.sql import functions as F

    q = F.col("query")
    card_like = F.length(F.regexp_replace(F.regexp_extract(q, Q.LONG_NUMBER_PATTERN, 0), r"\D", "")) \
        >= Q.CARD_MIN_DIGITS
    reason = (
        F.when(q.rlike(Q.EMAIL_PATTERN), F.lit("pii_email"))
        .when(q.rlike(Q.IPV4_PATTERN), F.lit("pii_ip"))
        .when(q.rlike(Q.LONG_NUMBER_PATTERN), F.when(card_like, "pii_card").otherwise("pii_phone"))
        .when(F.col("n_users") < min_users, F.lit("below_k"))
    )
    return (
        events.where((F.col("event_type") == "search") & q.isNotNull())
        .groupBy("query")
        .agg(F.countDistinct("user_key").alias("n_users"),
             F.count(F.lit(1)).cast("long").alias("n_searches"))
        .withColumn("hold_back", reason)
    )


def query_privacy_report(publication: DataFrame, ds: str, min_users: int) -> dict[str, Any]:
    """What :func:`query_publication` held back, as counts (never a query's text)."""
    from pyspark.sql import functions as F

    rows = (publication.groupBy("hold_back")
            .agg(F.count(F.lit(1)).alias("queries"), F.sum("n_searches").alias("searches"))
            .collect())
    by = {r["hold_back"]: (int(r["queries"]), int(r["searches"] or 0)) for r in rows}
    held = {k: v for k, v in by.items() if k is not None}
    return {
        "ds": ds,
        "min_query_users": min_users,
        "queries_total": sum(v[0] for v in by.values()),
        "queries_published": by.get(None, (0, 0))[0],
        "queries_below_k": by.get("below_k", (0, 0))[0],
        "queries_pii": {kind: by.get(f"pii_{kind}", (0, 0))[0] for kind in Q.PII_KINDS},
        "searches_held_back": sum(v[1] for v in held.values()),
    }


def search_pairs(events: DataFrame, catalog: DataFrame, min_query_users: int) -> DataFrame:
    """(query, item) click/purchase counts for the queries :func:`query_publication` allows."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    rel = events.where(F.col("event_type").isin("search", "click", "purchase")).select(
        "user_key", "session_id", "event_time", "event_id", "event_type", "item_id",
        F.when(F.col("event_type") == "search", F.col("query")).alias("q"),
    )
    w = (Window.partitionBy("user_key", "session_id").orderBy("event_time", "event_id")
         .rowsBetween(Window.unboundedPreceding, Window.currentRow))
    attributed = rel.withColumn("query", F.last("q", ignorenulls=True).over(w)).where(
        F.col("event_type").isin("click", "purchase") & F.col("query").isNotNull()
    )
    allowed = query_publication(events, min_query_users).where(F.col("hold_back").isNull())
    items = catalog.select("item_id")
    return (
        attributed.join(allowed.select("query"), "query", "left_semi")
        .join(F.broadcast(items), "item_id", "inner")
        .groupBy("query", "item_id")
        .agg(
            F.count(F.when(F.col("event_type") == "click", 1)).cast("long").alias("clicks"),
            F.count(F.when(F.col("event_type") == "purchase", 1)).cast("long").alias("purchases"),
        )
        .withColumn("n", F.col("clicks") + F.col("purchases"))
        .select(*S.SEARCH_PAIR_COLUMNS)
    )


def item_cooccurrence(sequences: DataFrame, max_per_item: int, window: int = COOC_WINDOW) -> DataFrame:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    # Pairs d steps apart: element i of item_ids with element i + d. arrays_zip of two slices
    # is compiled code; the zip_with lambda it replaces was interpreted per element (1M events,
    # co-occurrence table: 4.8 -> 3.8 s warm, same rows).
    n = F.size("item_ids")
    pairs = F.flatten(F.array(*[
        F.arrays_zip(F.slice("item_ids", F.lit(1), F.greatest(n - d, F.lit(0))).alias("a"),
                     F.slice("item_ids", F.lit(d + 1), n).alias("b"))
        for d in range(1, window + 1)
    ]))
    # Both directions of every pair, shuffled once by the first item: the count per
    # (item, partner) and the top-N window below then share that partitioning. Counting each
    # unordered pair once and mirroring the totals needed a second shuffle of the mirrored
    # rows (4M events: 9.0-9.6 s against 7.4-8.6 s for this, identical rows).
    mirrored = F.transform(pairs, lambda p: F.struct(p["b"].alias("a"), p["a"].alias("b")))
    counts = (
        sequences.select(F.explode(F.concat(pairs, mirrored)).alias("p"))
        .where(F.col("p.a").isNotNull() & F.col("p.b").isNotNull() & (F.col("p.a") != F.col("p.b")))
        .select(F.col("p.a").alias("item_id"), F.col("p.b").alias("other_item_id"))
        .repartition("item_id")
        .groupBy("item_id", "other_item_id").agg(F.count(F.lit(1)).cast("long").alias("count"))
    )
    top = Window.partitionBy("item_id").orderBy(F.col("count").desc(), F.col("other_item_id"))
    return (
        counts.withColumn("_r", F.row_number().over(top)).where(F.col("_r") <= max_per_item)
        .select(*S.COOCCURRENCE_COLUMNS)
    )


def build_feature_tables(events: DataFrame, catalog: DataFrame, ds: str, days_present: int,
                         cfg: EcrecConfig, cache: list[DataFrame] | None = None) -> dict[str, DataFrame]:
    """Pure transform: clean events of the window + the ds catalog -> the five feature tables.

    With ``cache`` (a list), the shared intermediates (catalog item events, user sequences) are
    persisted and appended to it so the caller can unpersist them: each is then computed once
    instead of once per table that uses it.
    """
    items = item_events(events, catalog)
    if cache is not None:
        from pyspark import StorageLevel

        items = items.persist(StorageLevel.MEMORY_AND_DISK)
        cache.append(items)
    seq = user_sequences(items, cfg.max_seq_len)
    if cache is not None:
        seq = seq.persist(StorageLevel.MEMORY_AND_DISK)
        cache.append(seq)
    return {
        "user_sequences": seq,
        "item_stats": item_stats(items, catalog, ds, days_present, cfg),
        "user_profiles": user_profiles(events, items, catalog, ds),
        "search_pairs": search_pairs(events, catalog, cfg.min_query_users),
        "item_cooccurrence": item_cooccurrence(seq, cfg.max_cooccurrence_per_item),
    }


FEATURE_MANIFEST = "features.json"


def feature_manifest_path(lake: Lake, ds: str) -> str:
    """``ops/runs/ds=D/features.json``: the run that published the feature set of ds (written
    after the last table; each table's ``_run.json`` names its run)."""
    return f"{lake.ops('runs', ds)}/{FEATURE_MANIFEST}"


def window_days(spark: SparkSession, lake: Lake, days: list[str]) -> tuple[list[str], list[str]]:
    """(days with clean events, days rightly without) of a lookback window; raises
    :class:`~ecrec_lib.pipeline.io.InputMissingError` naming the days that should have clean
    events and do not.

    A missing ``clean/events/ds=X`` is first recovered (a swap killed between its two renames
    leaves the previous copy beside it), under that partition's lock. It is then accepted only
    when X precedes the lake's first clean day (history not there yet) or X was an empty day
    (``ops/reconciliation/ds=X/events.json`` says ``no_data``); any other gap would silently
    shift every feature of the window, so the job fails instead.
    """
    present: list[str] = []
    absent: list[str] = []
    for d in days:
        path = lake.clean("events", d)
        if not io.path_exists(spark, path):
            with partitions.partition_lock(path, partitions.new_run_id()):
                partitions.recover_partition(path)
        (present if io.path_exists(spark, path) else absent).append(d)
    if not absent:
        return present, absent
    first = min(io.list_partitions(spark, lake.dataset("clean", "events")), default=None)
    gaps = [d for d in absent if first is not None and d > first and not _empty_day(spark, lake, d)]
    if gaps:
        raise io.InputMissingError(
            f"clean events are missing for {gaps} inside the lookback window {days[0]}..{days[-1]} "
            f"(the lake's clean events start at {first}): features would silently skip those "
            f"days. Run `python -m jobs.clean_events --ds {gaps[0]}` for each, then re-run"
        )
    return present, absent


def _empty_day(spark: SparkSession, lake: Lake, ds: str) -> bool:
    """Was ``ds`` cleaned and found empty (status ``no_data`` in its events reconciliation)?"""
    record = io.read_json(spark, f"{lake.ops('reconciliation', ds)}/events.json")
    return bool(record) and record.get("status") == "no_data"


def run_features(spark: SparkSession, cfg: EcrecConfig, ds: str,
                 lookback_days: int | None = None, run_id: str | None = None) -> FeatureResult:
    """Build, validate and publish ``features/<name>/ds=D`` for every table in lake.FEATURES.

    Every table is staged and validated first; nothing is published unless all critical
    suites pass (raises :class:`~ecrec_lib.validation.DataContractError`). The job holds the
    single-writer lock of its partitions throughout and stages under ``run_id`` (default: a
    fresh one). A day of the window missing from clean/events fails the job
    (:class:`~ecrec_lib.pipeline.io.InputMissingError`) unless it precedes the lake's first
    clean day or was an empty day (:func:`window_days`).
    """
    lake = Lake(cfg.lake_root)
    run_id = run_id or partitions.new_run_id()
    targets = [lake.features(name, ds) for name in FEATURES] + [lake.ops("runs", ds)]
    with partitions.partition_locks(targets, run_id):
        return _run_features(spark, cfg, ds, lookback_days, run_id)


def _run_features(spark: SparkSession, cfg: EcrecConfig, ds: str, lookback_days: int | None,
                  run_id: str) -> FeatureResult:
    from pyspark import StorageLevel

    from ecrec_lib.validation import DataContractError, validate
    from expectations import SUITES, SuiteContext

    lake = Lake(cfg.lake_root)
    days = ds_range(ds, lookback_days or cfg.lookback_days)
    cat_path = lake.clean("catalog", ds)
    if not io.path_exists(spark, cat_path):
        raise io.InputMissingError(
            f"clean catalog {cat_path} does not exist; run `python -m jobs.clean_events --ds {ds}` first"
        )
    present, missing = window_days(spark, lake, days)
    if missing:
        log.warning("features ds=%s: %d of %d lookback days have no clean events (before the "
                    "lake's first day, or empty days): %s", ds, len(missing), len(days),
                    missing if len(missing) <= 10 else missing[:10] + ["..."])
    if not present:
        raise io.InputMissingError(
            f"no clean events in the lookback window {days[0]}..{ds} (e.g. {lake.clean('events', ds)}); "
            f"run `python -m jobs.clean_events --ds {ds}` first"
        )
    events = spark.read.parquet(*[lake.clean("events", d) for d in present]).select(*S.CLEAN_EVENT_COLUMNS)
    # Hash-partitioned by user once, then cached: the per-user aggregates and windows
    # (sequences, profiles, search sessions) and their joins then need no further shuffle of
    # the events (the broadcast catalog join keeps the partitioning).
    events = events.repartition(cfg.spark_shuffle_partitions, "user_key").persist(
        StorageLevel.MEMORY_AND_DISK
    )
    catalog = spark.read.parquet(cat_path).persist(StorageLevel.MEMORY_AND_DISK)
    result = FeatureResult(ds, present, missing)
    shared: list[DataFrame] = []
    try:
        tables = build_feature_tables(events, catalog, ds, len(present), cfg, cache=shared)
        small = {"search_pairs", "item_cooccurrence", "item_stats", "user_profiles"}
        for name in FEATURES:
            t0 = time.perf_counter()
            io.write_staged(tables[name], lake.features(name, ds), run_id,
                            n_files=2 if name in small else None)
            log.info("features ds=%s: %s staged in %.1f s", ds, name, time.perf_counter() - t0)
        prev = (parse_ds(ds) - dt.timedelta(days=1)).isoformat()
        try:
            for name in FEATURES:
                staged = spark.read.parquet(io.staging_path(lake.features(name, ds), run_id))
                ctx = SuiteContext(
                    ds=ds, prev_rows=io.count_parquet_rows(spark, lake.features(name, prev)),
                    volume_drop_fraction=cfg.volume_drop_fraction,
                )
                validate(spark, staged, SUITES[name](ctx), name, ds,
                         f"{lake.ops('validation', ds)}/{name}")
                result.row_counts[name] = io.count_parquet_rows(
                    spark, io.staging_path(lake.features(name, ds), run_id)) or 0
        except DataContractError:
            for name in FEATURES:
                io.discard_staged(spark, lake.features(name, ds), run_id)
            raise
        for name in FEATURES:
            io.publish(spark, lake.features(name, ds), run_id, marker={
                "run_id": run_id, "table": name, "ds": ds, "rows": result.row_counts[name]})
        # Counts of the queries search_pairs held back, for the night's report.
        privacy = query_privacy_report(query_publication(events, cfg.min_query_users), ds,
                                       cfg.min_query_users)
        io.write_json(spark, f"{lake.ops('privacy', ds)}/{QUERY_PRIVACY_FILE}", privacy)
        result.query_privacy = privacy
        # last: a kill inside the loop above leaves tables of two runs, which the previous
        # manifest (or its absence) exposes to the scorer (check_feature_set)
        io.write_json(spark, feature_manifest_path(lake, ds),
                      {"ds": ds, "run_id": run_id, "tables": result.row_counts})
    finally:
        for df in (*shared, events, catalog):
            df.unpersist()
    log.info("features ds=%s: %s (days present %d/%d)", ds, result.row_counts, len(present), len(days))
    return result
