"""Warehouse connections: an embedded DuckDB file (default) or PostgreSQL (psycopg 3).

Both speak the same small interface so the publisher and the look-up CLI never branch on the
engine. SQL is written with ``%s`` placeholders (psycopg style); the DuckDB backend rewrites
them to ``?``.
"""

from __future__ import annotations

import contextlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ecrec_lib.privacy.secrets import redact_text

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class WarehouseError(RuntimeError):
    """The warehouse cannot be reached or used; the message names the URL (credentials
    redacted) and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(redact_text(message))


def ident(name: str) -> str:
    """A validated SQL identifier (schema/table/column names come from config and code only)."""
    if not _IDENT.match(name):
        raise WarehouseError(f"invalid SQL identifier {name!r}: use letters, digits and _")
    return name


class Warehouse(ABC):
    """One connection to the warehouse, scoped to ``schema``."""

    kind: str = ""

    def __init__(self, schema: str) -> None:
        self.schema = ident(schema)

    def fq(self, table: str) -> str:
        return f"{self.schema}.{ident(table)}"

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None: ...

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame: ...

    @abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[None]: ...

    @abstractmethod
    def insert_dataframe(self, table: str, df: pd.DataFrame) -> None:
        """Bulk-insert ``df`` (columns in the table's order) into ``schema.table``."""

    def relation_exists(self, name: str) -> bool:
        """Whether a table or view of that name exists in the schema (standard SQL catalog)."""
        n = self.scalar(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s "
            "AND table_name = %s",
            [self.schema, name],
        )
        return bool(n)

    @abstractmethod
    def column_comments(self, table: str) -> dict[str, str | None]: ...

    @abstractmethod
    def close(self) -> None: ...

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        df = self.query(sql, params)
        return None if df.empty else df.iat[0, 0]

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DuckDBWarehouse(Warehouse):
    kind = "duckdb"

    def __init__(self, path: str, schema: str, read_only: bool = False) -> None:
        import duckdb

        super().__init__(schema)
        if path != ":memory:":
            p = Path(path)
            if read_only and not p.is_file():
                raise WarehouseError(
                    f"DuckDB warehouse {p} does not exist: publish first "
                    "(`python -m jobs.publish_scores --ds D`)"
                )
            p.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(path, read_only=read_only)
        except duckdb.Error as exc:
            raise WarehouseError(f"cannot open DuckDB warehouse {path}: {exc}") from None
        self._in_tx = False

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        self.con.execute(sql.replace("%s", "?"), list(params or []))

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        return self.con.execute(sql.replace("%s", "?"), list(params or [])).df()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def insert_dataframe(self, table: str, df: pd.DataFrame) -> None:
        self.con.register("_ecrec_frame", df)
        try:
            cols = ", ".join(ident(c) for c in df.columns)
            self.con.execute(f"INSERT INTO {self.fq(table)} ({cols}) SELECT {cols} FROM _ecrec_frame")
        finally:
            self.con.unregister("_ecrec_frame")

    def column_comments(self, table: str) -> dict[str, str | None]:
        df = self.query(
            "SELECT column_name, comment FROM duckdb_columns() WHERE schema_name = %s "
            "AND table_name = %s",
            [self.schema, table],
        )
        return dict(zip(df["column_name"], df["comment"], strict=True))

    def close(self) -> None:
        self.con.close()


class PostgresWarehouse(Warehouse):
    kind = "postgres"

    def __init__(self, url: str, schema: str) -> None:
        import psycopg

        super().__init__(schema)
        try:
            self.con = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise WarehouseError(
                f"cannot connect to PostgreSQL warehouse {url}: {exc}; check "
                "warehouse_url (ECREC_WAREHOUSE_URL) and that the server is running"
            ) from None

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        self.con.execute(sql, params)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        cur = self.con.execute(sql, params)
        cols = [d.name for d in cur.description] if cur.description else []
        return pd.DataFrame(cur.fetchall(), columns=cols)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self.con.transaction():
            yield

    def insert_dataframe(self, table: str, df: pd.DataFrame) -> None:
        cols = ", ".join(ident(c) for c in df.columns)
        obj = df.astype(object).where(df.notna(), None)
        with self.con.cursor() as cur, cur.copy(
            f"COPY {self.fq(table)} ({cols}) FROM STDIN"
        ) as copy:
            for row in obj.itertuples(index=False, name=None):
                copy.write_row(row)

    def column_comments(self, table: str) -> dict[str, str | None]:
        df = self.query(
            "SELECT a.attname AS column_name, col_description(a.attrelid, a.attnum) AS comment "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped",
            [self.schema, table],
        )
        return dict(zip(df["column_name"], df["comment"], strict=True))

    def close(self) -> None:
        self.con.close()


def connect(url: str, schema: str, read_only: bool = False) -> Warehouse:
    """``duckdb:///path/file.duckdb`` (or ``duckdb:///:memory:``) or ``postgresql://...``."""
    if url.startswith("duckdb://"):
        path = url.removeprefix("duckdb://")
        path = path[1:] if path.startswith("/./") or path.startswith("/:memory:") else path
        if not path or path == "/":
            raise WarehouseError(f"warehouse_url {url!r} names no file: use duckdb:///path/x.duckdb")
        return DuckDBWarehouse(path, schema, read_only=read_only)
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return PostgresWarehouse(url, schema)
    raise WarehouseError(
        f"unsupported warehouse_url {url!r}: use duckdb:///path/file.duckdb or postgresql://..."
    )
