"""Engine factory and schema migrations (alembic, run programmatically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from automation.db.in_list import ArrayLiteralDumper, PgArray
from automation.errors import ConfigError, DatabaseError

MIGRATIONS = Path(__file__).with_name("migrations")


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite gets WAL mode, foreign keys and a busy timeout."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"invalid database URL {url!r}: {exc}") from exc
    if parsed.get_backend_name() == "sqlite":
        kwargs.setdefault("connect_args", {"timeout": 30})
        engine = create_engine(parsed, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql":
        kwargs.setdefault("pool_pre_ping", True)
        engine = create_engine(parsed, **kwargs)
        event.listen(engine, "connect", _array_literals)
        return engine
    raise ConfigError(f"unsupported database {parsed.get_backend_name()!r}: use sqlite or postgresql")


def _array_literals(dbapi_connection: Any, _record: Any) -> None:
    """psycopg sends ``PgArray`` parameters as array literals (see ``automation.db.in_list``)."""
    dbapi_connection.adapters.register_dumper(PgArray, ArrayLiteralDumper)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # an in-memory database answers "memory": fine
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` (idempotent)."""
    try:
        command.upgrade(alembic_config(engine), revision)
    except OperationalError as exc:
        raise DatabaseError(f"cannot migrate {engine.url.render_as_string()}: {exc.orig}") from exc


def head_revision() -> str | None:
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except OperationalError as exc:
        raise DatabaseError(f"cannot connect to {engine.url.render_as_string()}: {exc.orig}") from exc


def require_current(engine: Engine) -> None:
    """Fail with a clear message unless the schema is at the newest migration."""
    current = current_revision(engine)
    if current != head_revision():
        state = "not initialised" if current is None else f"at revision {current}"
        raise DatabaseError(
            f"the database {engine.url.render_as_string()} is {state}; run `automation db upgrade` first"
        )
