"""Pseudonymization: ``user_key = hex(HMAC-SHA256(key, user_id))``, and keyed session and
event ids ``hex(HMAC-SHA256(key, "<field>:" + value))[:32]`` (:func:`keyed_id_py`).

The ids are keyed too because a source may derive them from the person (the Amazon adapter
used to hash the public reviewer id): an unkeyed hash is reversible by hashing every known
id. The field name in the message keeps the three kinds apart (an event id equal to a user id
gets another pseudonym); 128 bits are plenty for uniqueness within and across days.

Spark has ``sha2`` but no HMAC, so a pandas UDF computes the user key -- once per *distinct*
user_id, then joined back (users are far fewer than events). The key travels to the executors
inside the UDF's closure (pickled with the task), so separate executor JVMs/Python workers on
other hosts get it without any environment variable; it is never written or logged. Session
and event ids (nearly one per row) are HMACed in the JVM from ``sha2`` instead
(:func:`key_ids`): there the padded key travels as a broadcast one-row frame whose columns
are dropped right after use (never cached, written or shown in a plan).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

import pandas as pd  # module level: pandas_udf resolves the string type hints here

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame


BROADCAST_MAX_IDS = 1_000_000  # (id, 64-char key) rows: ~100 MB at most on every executor
KEYED_ID_FIELDS = ("event_id", "session_id")
KEYED_ID_HEX = 32  # 128 bits


def user_key_py(key: bytes, user_id: str) -> str:
    """Reference implementation (and what the UDF computes)."""
    return hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()


def keyed_id_py(key: bytes, field: str, value: str) -> str:
    """Reference: the keyed pseudonym of a session or event id (``field`` names which)."""
    return hmac.new(key, f"{field}:{value}".encode(), hashlib.sha256).hexdigest()[:KEYED_ID_HEX]


def _hmac_udf(key: bytes):  # noqa: ANN202 - returns a pandas_udf
    from pyspark.sql.functions import pandas_udf

    secret = bytes(key)  # captured by the closure only

    @pandas_udf("string")
    def hmac_sha256(ids: pd.Series) -> pd.Series:
        return ids.map(
            lambda v: None if v is None else hmac.new(secret, v.encode("utf-8"), hashlib.sha256).hexdigest()
        )

    return hmac_sha256


def _hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """HMAC's inner and outer padded keys (RFC 2104, SHA-256 block of 64 bytes)."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def key_ids(df: DataFrame, key: bytes, fields: tuple[str, ...] = KEYED_ID_FIELDS) -> DataFrame:
    """Replace each column of ``fields`` (of :data:`KEYED_ID_FIELDS`) by its keyed pseudonym
    (:func:`keyed_id_py`; null stays null).

    Event ids are nearly all distinct, so the distinct-and-join of :func:`add_user_key` would
    shuffle the day for nothing, and a Python UDF would ship every row to Python: HMAC is
    built from Spark's ``sha2`` instead (``sha256(k^opad || sha256(k^ipad || m))``), in the JVM.
    The padded keys come from a one-row frame built from an RDD and broadcast to the join, so
    they are data on the executors (like a UDF closure), never a literal in a query plan that
    ``explain()`` or the Spark UI would print.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if len(key) < 16:
        raise ValueError("pseudonymization key must be at least 16 bytes")
    unknown = set(fields) - set(KEYED_ID_FIELDS)
    if unknown:
        raise ValueError(f"only {KEYED_ID_FIELDS} are keyed this way, got {sorted(unknown)}")
    spark = df.sparkSession
    ipad, opad = _hmac_pads(bytes(key))
    schema = T.StructType([T.StructField("__kipad", T.BinaryType()), T.StructField("__kopad", T.BinaryType())])
    pads = spark.createDataFrame(spark.sparkContext.parallelize([(bytearray(ipad), bytearray(opad))], 1),
                                 schema)
    out = df.crossJoin(F.broadcast(pads))

    def keyed(c: str) -> Column:
        msg = F.encode(F.concat(F.lit(f"{c}:"), F.col(c)), "UTF-8")
        inner = F.unhex(F.sha2(F.concat(F.col("__kipad"), msg), 256))
        return F.substring(F.sha2(F.concat(F.col("__kopad"), inner), 256), 1, KEYED_ID_HEX)

    return out.withColumns({c: keyed(c) for c in fields}).drop("__kipad", "__kopad")


def add_user_key(df: DataFrame, key: bytes, id_col: str = "user_id", out_col: str = "user_key",
                 ids: DataFrame | None = None, materialize: bool = False) -> DataFrame:
    """Add ``out_col`` = HMAC of ``id_col`` (null stays null); ``id_col`` is kept (drop it after).

    ``ids`` (one column, a superset of ``df``'s ids) is where the distinct ids are taken from:
    pass a cheap cached source when ``df`` is an expensive plan, so that plan is not evaluated
    a second time just to list its users. ``materialize`` computes the id -> key table
    eagerly (one Spark job) so the join can be planned from its real size.
    """
    from pyspark.sql import functions as F

    if len(key) < 16:
        raise ValueError("pseudonymization key must be at least 16 bytes")
    source = df.select(id_col) if ids is None else ids
    users = (
        source.select(F.col(source.columns[0]).alias("__uid")).where(F.col("__uid").isNotNull())
        .distinct()
        .withColumn(out_col, _hmac_udf(key)(F.col("__uid")))
    )
    if materialize:
        # Hashed once, here; a table of at most BROADCAST_MAX_IDS users is broadcast to the
        # join, instead of every row of ``df`` being shuffled by user first.
        users = users.localCheckpoint(eager=True)
        if users.count() <= BROADCAST_MAX_IDS:
            users = F.broadcast(users)
    return df.join(users, df[id_col] == users["__uid"], "left").drop("__uid")
