"""Database: SQLModel tables, the engine factory, migrations."""
