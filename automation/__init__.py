"""Rules-based campaign automation: playbooks as code, evaluated in the database.

The names in ``__all__`` are the stable API for code that embeds the worker (the CLI is built on them):
load and check playbooks, import data, run a tick, render templates, verify webhook signatures. Each is
imported on first use, so ``import automation`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "AutomationError": "automation.errors",
    "ConfigError": "automation.errors",
    "DataError": "automation.errors",
    "DatabaseError": "automation.errors",
    "InputError": "automation.errors",
    "PlaybookError": "automation.errors",
    "Problem": "automation.errors",
    "Settings": "automation.config",
    "make_engine": "automation.db.connect",
    "upgrade": "automation.db.connect",
    "load_playbook": "automation.playbook.models",
    "compile_playbook": "automation.rules.compiled",
    "validate_paths": "automation.authoring.validate",
    "import_customers": "automation.ingest.importer",
    "import_events": "automation.ingest.importer",
    "run_tick": "automation.worker.tick",
    "TemplateStore": "automation.messages.store",
    "verify_webhook": "automation.channels.webhook:verify",
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str) -> Any:
    """Import an API name on first use (PEP 562)."""
    where = _API.get(name)
    if where is None:
        raise AttributeError(f"module 'automation' has no attribute {name!r}")
    module, _, attribute = where.partition(":")
    value = getattr(import_module(module), attribute or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
