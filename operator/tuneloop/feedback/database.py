"""Engines for the two supported databases, and the transactions that need them to behave alike.

PostgreSQL (`postgresql://user@host/db`, driven by psycopg 3) in a cluster; a SQLite file
(`sqlite:///path.db`) on one machine.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from tuneloop.secret_settings import setting_from_environment

DATABASE_URL_ENV = "TUNELOOP_FEEDBACK_DATABASE_URL"
DATABASE_URL_FILE_ENV = "TUNELOOP_FEEDBACK_DATABASE_URL_FILE"  # a mounted Secret: no password in the environment
DEFAULT_DATABASE_URL = "sqlite:///tuneloop-feedback.db"
SQLITE_BUSY_TIMEOUT_SECONDS = 30
IMMEDIATE_OPTION = "tuneloop_immediate"


class DatabaseUrlError(ValueError):
    pass


def database_url_from_environment(environ: dict[str, str] | None = None) -> str:
    try:
        url = setting_from_environment(os.environ if environ is None else environ, DATABASE_URL_ENV,
                                       DATABASE_URL_FILE_ENV, "database URL")
    except ValueError as error:
        raise DatabaseUrlError(str(error)) from None
    return url or DEFAULT_DATABASE_URL


def parse_database_url(url: str) -> URL:
    """The URL with the psycopg 3 driver named for PostgreSQL (SQLAlchemy would pick psycopg2)."""
    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise DatabaseUrlError(f"cannot read the database URL: {error}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("postgresql", "sqlite"):
        raise DatabaseUrlError(f"unsupported database {parsed.drivername!r}: use postgresql:// or sqlite:///")
    return parsed


def first_line(error: BaseException) -> str:
    """An error as one line: SQLAlchemy's messages carry the SQL and a link on the lines after."""
    return (str(getattr(error, "orig", None) or error).strip().splitlines() or [type(error).__name__])[0]


def check_reachable(engine: Engine) -> None:
    """Connect once: a database that is down or a file that cannot be created is one clear line at
    start-up (DatabaseUrlError), not a traceback from inside the server."""
    try:
        with engine.connect():
            pass
    except exc.SQLAlchemyError as error:
        raise DatabaseUrlError(f"cannot reach database {printable_url(engine)}: {first_line(error)}") from None


def printable_url(engine_or_url: Engine | URL) -> str:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else engine_or_url
    return url.render_as_string(hide_password=True)


def make_engine(url: str) -> Engine:
    parsed = parse_database_url(url)
    try:
        if parsed.get_backend_name() != "sqlite":
            return create_engine(parsed, pool_pre_ping=True)
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
    except (exc.NoSuchModuleError, exc.ArgumentError, ImportError) as error:
        raise DatabaseUrlError(f"cannot use database {printable_url(parsed)}: {first_line(error)}") from None
    event.listen(engine, "connect", take_over_sqlite_transactions)
    event.listen(engine, "begin", begin_sqlite_transaction)
    return engine


def take_over_sqlite_transactions(dbapi_connection: Any, _record: Any) -> None:
    """Python's sqlite3 begins transactions only before data changes, so DDL would run outside
    them; SQLAlchemy's recipe: sqlite3 stays out of it and the `begin` event sends BEGIN."""
    dbapi_connection.isolation_level = None
    use_write_ahead_log(dbapi_connection)


def use_write_ahead_log(dbapi_connection: Any) -> None:
    """Readers do not wait for the writer. Switching a new file to WAL needs its exclusive lock, and
    SQLite answers "database is locked" at once, without waiting out the busy timeout, when another
    connection is switching it at the same moment (replicas starting together): try again, bounded."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_SECONDS
    while True:
        try:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def begin_sqlite_transaction(connection: Connection) -> None:
    immediate = connection.get_execution_options().get(IMMEDIATE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextmanager
def exclusive_transaction(engine: Engine, lock_key: int) -> Iterator[Connection]:
    """A transaction that holds a database-wide lock until it ends, so that no two run at once
    anywhere (other processes, other replicas): a transaction-level advisory lock on PostgreSQL,
    the database's write lock (BEGIN IMMEDIATE) on SQLite."""
    with engine.connect() as connection:
        connection.execution_options(**{IMMEDIATE_OPTION: True})
        with connection.begin():
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key})
            yield connection


@contextmanager
def consistent_read(engine: Engine) -> Iterator[Connection]:
    """One snapshot for several SELECTs. A SQLite transaction reads one snapshot already; PostgreSQL's
    default (READ COMMITTED) takes a new one per statement."""
    options = {"isolation_level": "REPEATABLE READ"} if engine.dialect.name == "postgresql" else {}
    with engine.connect() as connection:
        connection.execution_options(**options)
        with connection.begin():
            yield connection
