"""Distributed user scoring: users partitioned across Spark tasks, the item space and the model
broadcast, and per partition exactly the single-process code (``pipeline.score_users``: user
encoding, the torch top-K kernel, re-ranking, reasons) via ``mapInPandas``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from ecrec_lib.models.api import Recommender
from ecrec_lib.schema import USER_TOPK_COLUMNS
from ecrec_lib.scoring.pipeline import ItemSpace, ScoringParams, UserScorer, score_users

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

USER_TOPK_DDL = (
    "ds string, user_key string, rank int, item_id string, score double, "
    "reason_item_id string, strategy string, model_version string"
)
SEQ_COLUMNS = ("user_key", "item_ids", "event_types", "event_times")


def score_users_spark(
    spark: SparkSession,
    sequences: DataFrame,
    model: Recommender,
    items: ItemSpace,
    params: ScoringParams,
    now_ts: int,
    ds: str,
    model_version: str,
    n_partitions: int | None = None,
) -> DataFrame:
    """user_topk rows (two_tower) for every user of ``sequences`` (a Spark DataFrame with the
    user_sequences columns), computed per partition; threads per task = 1 (Spark owns cores)."""
    bc = spark.sparkContext.broadcast((model, items, params))

    def score_partition(batches):  # runs on executors
        import torch

        torch.set_num_threads(1)
        m, it, p = bc.value
        p = ScoringParams(**{**p.__dict__, "device": "cpu" if p.device == "auto" else p.device})
        for pdf in batches:
            if len(pdf):
                yield score_users(m, it, pdf, p, now_ts, ds, model_version)

    seqs = sequences.select(*SEQ_COLUMNS)
    if n_partitions:
        seqs = seqs.repartition(n_partitions, "user_key")
    return seqs.mapInPandas(score_partition, schema=USER_TOPK_DDL)


def spark_user_scorer(
    spark: SparkSession,
    model: Recommender,
    params: ScoringParams,
    now_ts: int,
    ds: str,
    model_version: str,
    n_partitions: int | None = None,
) -> UserScorer:
    """A ``pipeline.score_all`` user scorer that runs on Spark and collects the rows (the
    single-process job then writes the table atomically with the others)."""

    def scorer(items: ItemSpace, sequences: pd.DataFrame) -> pd.DataFrame:
        sdf = spark.createDataFrame(sequences[list(SEQ_COLUMNS)])
        out = score_users_spark(
            spark, sdf, model, items, params, now_ts, ds, model_version, n_partitions
        ).toPandas()
        out["rank"] = out["rank"].astype("int32")
        return out[list(USER_TOPK_COLUMNS)]

    return scorer
