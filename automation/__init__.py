"""Rules-based campaign automation: playbooks as code, evaluated in the database."""

from __future__ import annotations

__version__ = "0.1.0"
