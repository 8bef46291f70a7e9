"""Pseudonymization: ``user_key = hex(HMAC-SHA256(key, user_id))``, and keyed session and
event ids ``hex(HMAC-SHA256(key, "<field>:" + value))[:32]`` (:func:`keyed_id_py`).

The ids are keyed too because a source may derive them from the person (the Amazon adapter
used to hash the public reviewer id): an unkeyed hash is reversible by hashing every known
id. The field name in the message keeps the three kinds apart (an event id equal to a user id
gets another pseudonym); 128 bits are plenty for uniqueness within and across days.

Spark has ``sha2`` but no HMAC, so a pandas UDF computes it -- once per *distinct* user_id,
then joined back (users are far fewer than events). The key travels to the executors inside
the UDF's closure (pickled with the task), so separate executor JVMs/Python workers on other
hosts get it without any environment variable; it is never written, logged or put in a column.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

import pandas as pd  # module level: pandas_udf resolves the string type hints here

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


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


def _keyed_ids_udf(key: bytes, fields: tuple[str, ...]):  # noqa: ANN202 - returns a pandas_udf
    from pyspark.sql.functions import pandas_udf

    secret = bytes(key)  # captured by the closure only
    n = KEYED_ID_HEX
    schema = ", ".join(f"{f} string" for f in fields)

    prefixes = [f"{f}:".encode() for f in fields]

    def keyed(prefix: bytes, v: str | None) -> str | None:
        return None if v is None else hmac.new(secret, prefix + v.encode("utf-8"), hashlib.sha256).hexdigest()[:n]

    @pandas_udf(schema)
    def keyed_ids(*cols: pd.Series) -> pd.DataFrame:
        return pd.DataFrame({
            f: c.map(lambda v, p=p: keyed(p, v))
            for f, c, p in zip(fields, cols, prefixes, strict=True)
        })

    return keyed_ids


def key_ids(df: DataFrame, key: bytes, fields: tuple[str, ...] = KEYED_ID_FIELDS) -> DataFrame:
    """Replace each column of ``fields`` (of :data:`KEYED_ID_FIELDS`) by its keyed pseudonym
    (:func:`keyed_id_py`; null stays null), row by row in one Python pass: event ids are
    nearly all distinct, so a distinct-and-join would cost a shuffle for nothing."""
    from pyspark.sql import functions as F

    if len(key) < 16:
        raise ValueError("pseudonymization key must be at least 16 bytes")
    unknown = set(fields) - set(KEYED_ID_FIELDS)
    if unknown:
        raise ValueError(f"only {KEYED_ID_FIELDS} are keyed this way, got {sorted(unknown)}")
    tmp = "__keyed_ids"
    out = df.withColumn(tmp, _keyed_ids_udf(key, fields)(*[F.col(f) for f in fields]))
    return out.withColumns({f: F.col(f"{tmp}.{f}") for f in fields}).drop(tmp)


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
