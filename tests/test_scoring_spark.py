"""The Spark scoring path gives the same user_topk as the single-process path."""

from __future__ import annotations

import pandas as pd
import pytest

from ecrec_lib.config import load_config
from ecrec_lib.lake import Lake
from ecrec_lib.scoring.tables import read_table
from jobs import score_topk
from tests import scoring_support
from tests.scoring_support import CATALOG, DS, FakeRecommender, write_tiny_lake


@pytest.mark.spark
def test_spark_engine_equals_local(spark, tmp_path):
    import torch
    from pyspark import cloudpickle

    torch.set_num_threads(1)
    # The test-local model class travels to the Python workers by value.
    cloudpickle.register_pickle_by_value(scoring_support)
    out = {}
    for engine in ("local", "spark"):
        root = tmp_path / engine
        write_tiny_lake(root)
        cfg = load_config(None, env={}, lake_root=str(root), max_per_category=2)
        summary = score_topk.run(cfg, DS, FakeRecommender(CATALOG), "7", k=4, engine=engine,
                                 spark=spark if engine == "spark" else None)
        assert summary["engine"] == engine
        out[engine] = read_table("user_topk", Lake(str(root)), DS)
    assert (out["spark"]["strategy"] == "two_tower").sum() == 12
    pd.testing.assert_frame_equal(out["spark"], out["local"])
