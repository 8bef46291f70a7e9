"""The SQL warehouse the score tables are published to (DuckDB file or PostgreSQL)."""

from ecrec_lib.warehouse.backend import (
    Warehouse,
    WarehouseError,
    WarehouseLockedError,
    connect,
    read_copy_path,
)
from ecrec_lib.warehouse.publish import PublishError, ensure_schema, partitions, publish

__all__ = [
    "PublishError",
    "Warehouse",
    "WarehouseError",
    "WarehouseLockedError",
    "connect",
    "ensure_schema",
    "partitions",
    "publish",
    "read_copy_path",
]
