"""Warehouse connections: an embedded DuckDB file (default) or PostgreSQL (psycopg 3).

Both speak the same small interface so the publisher and the look-up CLI never branch on the
engine. SQL is written with ``%s`` placeholders (psycopg style); the DuckDB backend rewrites
them to ``?``.

Concurrency. PostgreSQL readers never block a writer (MVCC): they see the last committed
night. A DuckDB file has one writer *process* at a time, and any other process holding the
file -- even through a ``read_only`` connection, which takes a shared lock -- makes a writer's
open fail with ``IO Error: Could not set lock on file "...": Conflicting lock is held in
<program> (PID n)``. So:

* every DuckDB open retries that one error with capped exponential backoff, up to
  ``lock_wait_s`` in total (config ``warehouse_lock_wait_s``), then fails with
  :class:`WarehouseLockedError` naming the holder's PID and the fix;
* the Airflow tasks that write share the pool ``ecrec_warehouse`` (1 slot);
* our own readers open ``read_only`` and hold the file only for their queries;
* BI tools read the *read copy* (``<dir>/read/<file>``) that every writer refreshes after its
  commit (:meth:`Warehouse.refresh_read_copy`): a snapshot written beside and renamed over
  the previous one, so a BI session holding it never blocks a publish (it keeps the snapshot
  it opened until it reconnects).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ecrec_lib.privacy.secrets import redact_text

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# DuckDB's message when another process holds the file (duckdb 1.x-2.x, read-write or read-only
# holder alike); nothing else is retried.
DUCKDB_LOCK_CONFLICT = re.compile(
    r'Could not set lock on file "(?P<file>[^"]+)": Conflicting lock is held in '
    r"(?P<holder>.+?) \(PID (?P<pid>\d+)\)"
)
DEFAULT_LOCK_WAIT_S = 300.0  # config warehouse_lock_wait_s
FIRST_LOCK_BACKOFF_S = 0.1
MAX_LOCK_BACKOFF_S = 5.0  # cap of one pause: a released lock is noticed within 5 s
READ_COPY_DIR = "read"

log = logging.getLogger(__name__)


class WarehouseError(RuntimeError):
    """The warehouse cannot be reached or used; the message names the URL (credentials
    redacted) and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(redact_text(message))


class WarehouseLockedError(WarehouseError):
    """Another process still held the DuckDB file after the whole lock wait."""

    def __init__(self, path: str, holder: str, pid: int, waited_s: float, tries: int) -> None:
        self.path, self.holder, self.pid, self.waited_s, self.tries = path, holder, pid, waited_s, tries
        super().__init__(
            f"DuckDB warehouse {path} is locked by another process: {holder} (PID {pid}) still "
            f"held it after {waited_s:.1f} s and {tries} tries. DuckDB allows one writer per file "
            "and even a read-only connection of another process blocks it. See what holds it "
            f"with `ps -o pid,etime,args -p {pid}`, let it finish or stop it, then re-run. BI tools "
            f"must read the published copy {read_copy_path(path)} instead of the warehouse file "
            "(README, \"Warehouse writers and readers\"); to wait longer raise "
            "warehouse_lock_wait_s (ECREC_WAREHOUSE_LOCK_WAIT_S)"
        )


def lock_conflict(exc: BaseException) -> re.Match[str] | None:
    """The file/holder/PID of DuckDB's lock-conflict error, or None for any other error."""
    return DUCKDB_LOCK_CONFLICT.search(str(exc))


def read_copy_path(path: str | Path) -> Path:
    """Where BI tools read a DuckDB warehouse ``<dir>/<file>``: ``<dir>/read/<file>`` (same file
    name, so the same catalog name in queries)."""
    p = Path(path)
    return p.parent / READ_COPY_DIR / p.name


def open_duckdb(
    path: str,
    read_only: bool,
    lock_wait_s: float = DEFAULT_LOCK_WAIT_S,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Any:
    """``duckdb.connect(path, read_only)``, retrying DuckDB's lock conflict with capped
    exponential backoff (0.1 s doubling, at most 5 s a pause) for ``lock_wait_s`` in total.

    Raises :class:`WarehouseLockedError` once the wait is spent and :class:`WarehouseError`
    at once for any other error.
    """
    import duckdb

    start, pause, tries = clock(), FIRST_LOCK_BACKOFF_S, 0
    while True:
        tries += 1
        try:
            return duckdb.connect(path, read_only=read_only)
        except duckdb.IOException as exc:
            held = lock_conflict(exc)
            if held is None:
                raise WarehouseError(f"cannot open DuckDB warehouse {path}: {exc}") from None
            waited = clock() - start
            if waited >= lock_wait_s:
                raise WarehouseLockedError(path, held["holder"], int(held["pid"]), waited,
                                           tries) from None
            nap = min(pause, MAX_LOCK_BACKOFF_S, lock_wait_s - waited)
            log.warning(
                "DuckDB warehouse %s is locked by %s (PID %s): try %d failed, next in %.1f s "
                "(waited %.1f of %.0f s)", path, held["holder"], held["pid"], tries, nap, waited,
                lock_wait_s,
            )
            sleep(nap)
            pause *= 2
        except duckdb.Error as exc:
            raise WarehouseError(f"cannot open DuckDB warehouse {path}: {exc}") from None


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

    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Held by a publisher for its whole publish: no other publisher of this schema runs
        meanwhile, so what staging tables it finds were left by a killed one. DuckDB: the
        file's write lock already is that (one read-write process per file)."""
        yield

    def refresh_read_copy(self) -> Path | None:
        """After a committed write: refresh the copy BI tools read (DuckDB); returns its path.

        PostgreSQL needs none (readers never block the writer) and returns None."""
        return None

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

    def __init__(self, path: str, schema: str, read_only: bool = False,
                 lock_wait_s: float = DEFAULT_LOCK_WAIT_S) -> None:
        super().__init__(schema)
        self.path = path
        if path != ":memory:":
            p = Path(path)
            if read_only and not p.is_file():
                raise WarehouseError(
                    f"DuckDB warehouse {p} does not exist: publish first "
                    "(`python -m jobs.publish_scores --ds D`)"
                )
            p.parent.mkdir(parents=True, exist_ok=True)
        self.con = open_duckdb(path, read_only, lock_wait_s)
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

    def refresh_read_copy(self) -> Path | None:
        """Write a snapshot of the whole database to ``read/<file>`` (a hidden temp file beside
        it, renamed over the previous one); a BI session holding the previous copy keeps reading
        it (its lock is on the replaced file, never on the new one or on the warehouse).

        Consistent because it runs inside this writer's connection, after its commit: no other
        process can write while we hold the file. ``CHECKPOINT`` moves everything into the main
        file, which is then copied byte for byte (0.1 s for 68 MB where ``COPY FROM DATABASE``
        took 9 s, BENCHMARKS.md); if the write-ahead log is not empty after the checkpoint the
        copy is made table by table with ``COPY FROM DATABASE`` instead.
        """
        if self.path == ":memory:":
            return None
        target = read_copy_path(self.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        self.con.execute("CHECKPOINT")
        wal = Path(f"{self.path}.wal")
        try:
            if wal.is_file() and wal.stat().st_size > 0:
                log.warning("%s not empty after CHECKPOINT: copying the read copy table by table", wal)
                self._copy_database(tmp)
            else:
                shutil.copyfile(self.path, tmp)
            os.replace(tmp, target)
        except BaseException:
            for leftover in (tmp, Path(f"{tmp}.wal")):
                leftover.unlink(missing_ok=True)
            raise
        log.info("read copy of %s refreshed: %s", self.path, target)
        return target

    def _copy_database(self, tmp: Path) -> None:
        import duckdb

        catalog = self.scalar("SELECT current_database()")
        self.con.execute(f"ATTACH '{tmp}' AS __ecrec_read_copy")
        try:
            self.con.execute(f'COPY FROM DATABASE "{catalog}" TO __ecrec_read_copy')
        finally:
            with contextlib.suppress(duckdb.Error):  # an error of the COPY itself propagates
                self.con.execute("DETACH DATABASE IF EXISTS __ecrec_read_copy")

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

    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        """A session advisory lock per schema: a second publisher waits for the first; the lock
        goes with the connection, so a killed publisher never leaves it held."""
        key = f"ecrec-publish:{self.schema}"
        self.con.execute("SELECT pg_advisory_lock(hashtext(%s))", [key])
        try:
            yield
        finally:
            if not self.con.closed:
                self.con.execute("SELECT pg_advisory_unlock(hashtext(%s))", [key])

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


def connect(url: str, schema: str, read_only: bool = False,
            lock_wait_s: float = DEFAULT_LOCK_WAIT_S) -> Warehouse:
    """``duckdb:///path/file.duckdb`` (or ``duckdb:///:memory:``) or ``postgresql://...``.

    ``lock_wait_s``: how long a DuckDB open retries a file another process holds
    (:func:`open_duckdb`); PostgreSQL ignores it (MVCC readers never block the writer)."""
    if url.startswith("duckdb://"):
        path = url.removeprefix("duckdb://")
        path = path[1:] if path.startswith("/./") or path.startswith("/:memory:") else path
        if not path or path == "/":
            raise WarehouseError(f"warehouse_url {url!r} names no file: use duckdb:///path/x.duckdb")
        return DuckDBWarehouse(path, schema, read_only=read_only, lock_wait_s=lock_wait_s)
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return PostgresWarehouse(url, schema)
    raise WarehouseError(
        f"unsupported warehouse_url {url!r}: use duckdb:///path/file.duckdb or postgresql://..."
    )
