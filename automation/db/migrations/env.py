"""Alembic environment: the engine is handed in by ``automation.db.connect.upgrade``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from automation.db.tables import metadata

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # the alembic CLI, e.g. `alembic revision --autogenerate`
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite:///automation.db")

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
