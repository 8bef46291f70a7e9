"""User pseudonymization: ``user_key = hex(HMAC-SHA256(key, user_id))``.

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


def user_key_py(key: bytes, user_id: str) -> str:
    """Reference implementation (and what the UDF computes)."""
    return hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()


def _hmac_udf(key: bytes):  # noqa: ANN202 - returns a pandas_udf
    from pyspark.sql.functions import pandas_udf

    secret = bytes(key)  # captured by the closure only

    @pandas_udf("string")
    def hmac_sha256(ids: pd.Series) -> pd.Series:
        return ids.map(
            lambda v: None if v is None else hmac.new(secret, v.encode("utf-8"), hashlib.sha256).hexdigest()
        )

    return hmac_sha256


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
