"""The landing contract of raw partitions: the ``_SUCCESS`` marker (or manifest) written last,
checked by the sensor, jobs.clean_events and jobs.validate; empty days as "no data"."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from ecrec_lib.generator.writer import write_jsonl_partition
from ecrec_lib.landing import (
    LANDING,
    LANDING_MARKER,
    MISSING,
    READY,
    LandingIncompleteError,
    landing_status,
    require_landed,
)
from ecrec_lib.pipeline.io import InputMissingError

DS = "2024-01-01"


def _part(root: Path, kind: str = "events") -> Path:
    return root / "raw" / kind / f"ds={DS}"


def _land(path: Path, lines: list[str], name: str = "part-00000.json.gz") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    f = path / name
    f.write_bytes(gzip.compress(("".join(x + "\n" for x in lines)).encode()))
    return f


def test_status_follows_the_landing(tmp_path: Path) -> None:
    part = _part(tmp_path)
    assert landing_status(str(part)).state == MISSING
    _land(part, ['{"a": 1}'])
    (part / ".part-00001.json.gz.crc").write_text("")  # hidden files are never data
    st = landing_status(str(part))
    assert st.state == LANDING and not st.ready
    assert list(st.data_files) == ["part-00000.json.gz"]
    assert "no _SUCCESS marker yet" in st.reason and st.marker == f"{part}/_SUCCESS"
    (part / LANDING_MARKER).write_text("")  # Hadoop/Spark style: an empty marker
    st = landing_status(str(part))
    assert st.state == READY and st.ready and not st.empty


def test_manifest_must_match_the_files(tmp_path: Path) -> None:
    part = _part(tmp_path)
    f = _land(part, ['{"a": 1}', '{"a": 2}'])
    size = f.stat().st_size
    listed = {"part-00000.json.gz": size, "part-00001.json.gz": 7}
    (part / LANDING_MARKER).write_text(json.dumps({"files": listed, "lines": 3}))
    st = landing_status(str(part))
    assert st.state == LANDING
    assert "part-00001.json.gz is listed in the manifest but absent" in st.reason
    (part / LANDING_MARKER).write_text(json.dumps({"files": {"part-00000.json.gz": size + 1}}))
    assert f"part-00000.json.gz has {size} bytes, the manifest says {size + 1}" in (
        landing_status(str(part)).reason
    )
    (part / LANDING_MARKER).write_text("{not json")
    assert "neither empty nor a JSON manifest" in landing_status(str(part)).reason
    (part / LANDING_MARKER).write_text(json.dumps({"files": {"part-00000.json.gz": size}}))
    assert landing_status(str(part)).ready


def test_require_landed_names_the_marker_and_the_fix(tmp_path: Path) -> None:
    part = _part(tmp_path)
    assert require_landed(str(part), "raw events").state == MISSING  # the reader's own error
    _land(part, ['{"a": 1}'])
    with pytest.raises(LandingIncompleteError) as info:
        require_landed(str(part), "raw events")
    msg = str(info.value)
    assert f"raw events partition {part} is not completely landed" in msg
    assert f"touch {part}/_SUCCESS" in msg and "docs/data_contracts.md" in msg
    assert isinstance(info.value, InputMissingError)  # jobs map it to exit code 2


def test_writer_lands_the_manifest_last_and_empty_days_as_marker_only(tmp_path: Path) -> None:
    part = _part(tmp_path)
    files = write_jsonl_partition(str(part), [f'{{"n":{i}}}' for i in range(5)], max_lines=2)
    manifest = json.loads((part / LANDING_MARKER).read_text())
    assert manifest["lines"] == 5
    assert manifest["files"] == {Path(f).name: Path(f).stat().st_size for f in files}
    assert landing_status(str(part)).ready
    # the marker is the newest file of the partition: written after the last part
    newest = max(part.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert newest.name == LANDING_MARKER
    empty = _part(tmp_path / "empty")
    assert write_jsonl_partition(str(empty), []) == []
    assert [p.name for p in empty.iterdir()] == [LANDING_MARKER]
    st = landing_status(str(empty))
    assert st.ready and st.empty


def test_clean_job_refuses_a_half_landed_day_before_spark(tmp_path: Path, capfd) -> None:
    from jobs import clean_events

    lake = tmp_path / "lake"
    write_jsonl_partition(str(_part(lake, "catalog")), ['{"item_id": "i1"}'])
    _land(_part(lake), ['{"a": 1}'])  # events: data, no marker yet
    rc = clean_events.main(["--ds", DS, "--lake", str(lake)])
    assert rc == 2
    err = capfd.readouterr().err
    assert f"raw events partition {_part(lake)} is not completely landed" in err
    assert f"touch {_part(lake)}/_SUCCESS" in err
    assert not (lake / "clean").exists()


@pytest.mark.spark
def test_validate_and_clean_on_landing_and_empty_days(spark, tmp_path: Path) -> None:
    from ecrec_lib.config import load_config
    from ecrec_lib.pipeline.clean import run_clean
    from ecrec_lib.pipeline.contracts import validate_partition
    from ecrec_lib.pipeline.io import NoDataError

    lake = tmp_path / "lake"
    cfg = load_config(None, env={}, lake_root=str(lake))
    events = _part(lake)
    _land(events, ['{"a": 1}'])
    with pytest.raises(LandingIncompleteError, match="no _SUCCESS marker yet"):
        validate_partition(spark, cfg, "raw_events", DS, store=False)
    # an empty day as the producers land it: the marker and no data file
    for f in events.iterdir():
        f.unlink()
    (events / LANDING_MARKER).write_text(json.dumps({"files": {}, "lines": 0}))
    with pytest.raises(NoDataError, match="landed without a line"):
        validate_partition(spark, cfg, "raw_events", DS, store=False)
    item = {"item_id": "i1", "title": "Red Nail Polish", "description": "a thing",
            "category_path": "Beauty > Makeup > Nails", "brand": "Acme", "price": 9.5,
            "in_stock": True, "created_at": "2023-06-01T00:00:00+00:00"}
    write_jsonl_partition(str(_part(lake, "catalog")), [json.dumps(item)])
    result = run_clean(spark, cfg, DS, key=b"k" * 32)
    assert result.no_data
    rec = json.loads((lake / f"ops/reconciliation/ds={DS}/events.json").read_text())
    assert rec["status"] == "no_data" and rec["input_rows"] == 0
    assert not (lake / f"clean/events/ds={DS}").exists()


def test_validate_job_settles_landing_before_spark(tmp_path: Path, capfd) -> None:
    from jobs import validate

    lake = tmp_path / "lake"
    events = _part(lake)
    write_jsonl_partition(str(events), [])  # landed, no event
    argv = ["--dataset", "raw_events", "--ds", DS, "--lake", str(lake), "--master", "local[1]"]
    assert validate.main(argv) == 3  # no data: the DAG skips
    assert "raw_events: no data" in capfd.readouterr().err
    (events / LANDING_MARKER).unlink()
    _land(events, ['{"a": 1}'])
    assert validate.main(argv) == 2
    assert f"touch {events}/_SUCCESS" in capfd.readouterr().err


def test_the_report_states_a_no_data_night(tmp_path: Path) -> None:
    from ecrec_lib.config import load_config
    from jobs.daily_report import collect, render

    lake = tmp_path / "lake"
    cfg = load_config(None, env={}, lake_root=str(lake),
                      warehouse_url=f"duckdb://{tmp_path}/wh/warehouse.duckdb")
    rec = lake / "ops" / "reconciliation" / f"ds={DS}" / "events.json"
    rec.parent.mkdir(parents=True)
    rec.write_text(json.dumps({"dataset": "events", "ds": DS, "input_rows": 0, "status": "no_data"}))
    report = collect(cfg, DS)
    assert report["outcome"]["status"] == "no_data"
    text = render(report)
    assert f"**no data**: raw events partition {_part(lake)} landed without any event" in text
    assert "published warehouse tables were left as they were" in text
    rec.write_text(json.dumps({"dataset": "events", "ds": DS, "input_rows": 5, "status": "ok"}))
    assert collect(cfg, DS)["outcome"]["status"] == "processed"
    assert "no data" not in render(collect(cfg, DS))
