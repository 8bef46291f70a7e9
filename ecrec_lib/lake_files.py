"""Small files on the lake (ops records, reports), written atomically, local or on a Hadoop
file system: below both the pipeline (:mod:`ecrec_lib.pipeline.io`) and the generic data
contract runner (:mod:`ecrec_lib.validation`), which write through it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecrec_lib.lake import is_local

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def local_path(path: str) -> str:
    return path.removeprefix("file://")


def hadoop_fs(spark: SparkSession, path: str) -> tuple[Any, Any]:
    jvm = spark._jvm  # type: ignore[attr-defined]
    jpath = jvm.org.apache.hadoop.fs.Path(path)
    return jpath.getFileSystem(spark._jsc.hadoopConfiguration()), jpath  # type: ignore[attr-defined]


def write_json(spark: SparkSession, path: str, record: dict[str, Any]) -> None:
    """Write one small ops record (JSON) atomically (local: temp file + rename)."""
    text = json.dumps(record, indent=2, sort_keys=True, default=str)
    write_text(spark, path, text)


def write_text(spark: SparkSession, path: str, text: str) -> None:
    if is_local(path):
        target = Path(local_path(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text)
        tmp.replace(target)
        return
    fs, jpath = hadoop_fs(spark, path)
    stream = fs.create(jpath, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()
