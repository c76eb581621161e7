"""The stable API of the package: every name in ``automation.__all__`` resolves, lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import automation


@pytest.mark.parametrize("name", [n for n in automation.__all__ if n != "__version__"])
def test_every_api_name_resolves_to_a_public_object(name: str) -> None:
    value = getattr(automation, name)
    assert callable(value)
    assert not value.__name__.startswith("_")


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        automation.nope  # noqa: B018


def test_importing_the_package_does_not_import_the_engine_or_jinja() -> None:
    code = "import sys, automation; print(sorted(m for m in ('sqlalchemy', 'jinja2') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
