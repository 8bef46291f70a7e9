"""The SQL warehouse the score tables are published to (DuckDB file or PostgreSQL)."""

from ecrec_lib.warehouse.backend import Warehouse, WarehouseError, connect
from ecrec_lib.warehouse.publish import PublishError, ensure_schema, partitions, publish

__all__ = [
    "PublishError",
    "Warehouse",
    "WarehouseError",
    "connect",
    "ensure_schema",
    "partitions",
    "publish",
]
