"""Re-run one dataset's Great Expectations suite on a published partition (``jobs.validate``).

The suite context is rebuilt the way the producing job built it: the previous partition's row
count (volume check), the ds window (freshness) and, for clean events, the minimum clean rows
derived from ``ops/reconciliation/ds=D/events.json``.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING

from ecrec_lib import schema as S
from ecrec_lib.config import EcrecConfig
from ecrec_lib.lake import FEATURES, Lake, parse_ds
from ecrec_lib.pipeline import io

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from ecrec_lib.validation import SuiteOutcome

DATASETS = ("raw_events", "clean_events", "catalog", *FEATURES)


def _location(lake: Lake, dataset: str, ds: str) -> tuple[str, str, str]:
    """(stage, name, partition path) of a dataset name used by the suites."""
    if dataset == "raw_events":
        return "raw", "events", lake.raw("events", ds)
    if dataset == "clean_events":
        return "clean", "events", lake.clean("events", ds)
    if dataset == "catalog":
        return "clean", "catalog", lake.clean("catalog", ds)
    return "features", dataset, lake.features(dataset, ds)


def validate_partition(spark: SparkSession, cfg: EcrecConfig, dataset: str, ds: str,
                       store: bool = True) -> SuiteOutcome:
    """Run ``dataset``'s suite on partition ``ds``; store results; raise on critical failure.

    Raw events: :class:`~ecrec_lib.landing.LandingIncompleteError` before the ``_SUCCESS``
    marker, :class:`~ecrec_lib.pipeline.io.NoDataError` for a landed day without a line."""
    from pyspark.sql import functions as F

    from ecrec_lib.pipeline.clean import RAW_REDACTED_COLUMNS, _field_stats, _parse
    from ecrec_lib.validation import validate
    from expectations import SUITES, SuiteContext

    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    lake = Lake(cfg.lake_root)
    stage, name, path = _location(lake, dataset, ds)
    if not io.path_exists(spark, path):
        raise io.InputMissingError(f"{dataset} partition {path} does not exist; run the job that "
                                   "produces it first")
    out_dir = f"{lake.ops('validation', ds)}/{dataset}" if store else None
    common = {"ds": ds, "volume_drop_fraction": cfg.volume_drop_fraction,
              "late_tolerance_hours": cfg.late_tolerance_hours}
    if dataset == "raw_events":
        from ecrec_lib.landing import require_landed

        require_landed(path, "raw events")  # a half-landed day is refused, never judged
        parsed = _parse(spark, path, S.RAW_EVENT_FIELDS, "events").cache()
        n, _, present = _field_stats(parsed, S.RAW_EVENT_FIELDS)
        if n == 0:
            parsed.unpersist()
            raise io.NoDataError(f"raw events partition {path} has landed without a line: an "
                                 "empty day, nothing to validate (clean records it as no_data)")
        df = parsed.where(~F.col("_malformed") & F.col("_bad").isNull()).select(*present)
        ctx = SuiteContext(present_columns=present, **common)
        redact: tuple[str, ...] = RAW_REDACTED_COLUMNS
    else:
        df = spark.read.parquet(path)
        prev = (parse_ds(ds) - dt.timedelta(days=1)).isoformat()
        min_rows = 1 if dataset in {"clean_events", "catalog"} else 0
        if dataset == "clean_events":
            rec = io.read_json(spark, f"{lake.ops('reconciliation', ds)}/events.json") or {}
            min_rows = max(1, math.ceil(int(rec.get("input_rows", 0)) * cfg.min_clean_fraction))
        ctx = SuiteContext(prev_rows=io.count_parquet_rows(spark, lake.partition(stage, name, prev)),
                           min_rows=min_rows, **common)
        redact = ()
    return validate(spark, df, SUITES[dataset](ctx), dataset, ds, out_dir, redact)
