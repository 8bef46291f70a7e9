"""The privacy boundary: raw user ids and PII exist only in raw/ and quarantine_raw/.

Values are planted in one generated night of raw events (a valid event, a search whose query
holds an e-mail and a phone number, a truncated line and a wrong-typed line), then clean and
build_features run; every file of the lake outside those two zones is scanned *as values*
(Parquet, DuckDB, gzip, text) and must hold none of them, while quarantine_raw must hold them
(the scan would find them)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.privacy_support import PLANTED, format_hits, hits_outside, plant_raw_pii, scan_tree

DS = "2024-03-01"
KEY = b"boundary-test-key-0123456789"
RESTRICTED = ("raw", "quarantine_raw")


def test_scanner_reads_values_not_compressed_bytes(tmp_path: Path) -> None:
    """A planted string is found in a zstd Parquet file (where a byte search cannot see it), a
    DuckDB table, a gzip file and a text file; nothing is reported elsewhere."""
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    secret = "Needle-Value-0042"
    values = [f"{secret}-{i}" for i in range(200)]  # zstd pages, no plain-text min/max stats
    pq.write_table(pa.table({"v": values, "n": list(range(200))}), tmp_path / "a.parquet",
                   compression="zstd", write_statistics=False)
    assert secret.encode() not in (tmp_path / "a.parquet").read_bytes()
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("create schema s; create table s.t(x varchar, m map(varchar, varchar))")
    con.execute("insert into s.t values ('other', map {'k': ?})", [secret.lower()])
    con.close()
    (tmp_path / "deep" / ".hidden").mkdir(parents=True)
    (tmp_path / "deep" / ".hidden" / "x.json.gz").write_bytes(gzip.compress(secret.encode()))
    (tmp_path / "r.json").write_text(json.dumps({"x": secret.upper()}))
    (tmp_path / "clean.txt").write_text("nothing here")
    hits = scan_tree(tmp_path, [secret])
    assert sorted((h.path, h.where) for h in hits) == [
        ("a.parquet", "column v"), ("deep/.hidden/x.json.gz", "bytes"), ("r.json", "bytes"),
        ("w.duckdb", "table s.t.m"),
    ]


@pytest.mark.spark
@pytest.mark.slow
def test_no_raw_id_or_pii_outside_the_restricted_zones(spark, tmp_path: Path) -> None:
    from ecrec_lib.config import load_config
    from ecrec_lib.generator import generate
    from ecrec_lib.pipeline.clean import run_clean
    from ecrec_lib.pipeline.features import run_features

    lake = tmp_path / "lake"
    generate(str(lake), DS, days=1, users=80, items=60, seed=5, dirty_rate=0.02)
    plant_raw_pii(lake, DS)
    # a tiny day: the generator's bot traffic (at least 150 events) outweighs the clean rows
    cfg = load_config(env={}, lake_root=str(lake), spark_shuffle_partitions=2, min_clean_fraction=0.2)
    result = run_clean(spark, cfg, DS, key=KEY)
    assert result.events is not None and result.events.balanced
    assert result.events.quarantine_by_reason.get("wrong_type", 0) >= 1
    run_features(spark, cfg, DS)
    assert any((lake / "features").rglob("*.parquet"))

    hits = scan_tree(lake, PLANTED)
    leaks = hits_outside(hits, RESTRICTED)
    assert leaks == [], "raw ids / PII outside raw/ and quarantine_raw/:\n" + format_hits(leaks)
    # the planted values are really there to find: every one in quarantine_raw
    restricted = {h.needle for h in hits if h.path.startswith("quarantine_raw/events/")}
    assert restricted == set(PLANTED), format_hits(hits)
    # ... and the clean search query still exists, masked
    clean = spark.read.parquet(str(lake / "clean" / "events" / f"ds={DS}"))
    queries = [r.query for r in clean.where("query like 'call %'").collect()]
    assert queries == ["call <phone> or mail <email> from <ip>"]
