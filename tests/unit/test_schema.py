"""The JSON Schema printed by ``automation schema`` accepts the shipped playbooks and rejects bad shapes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner
from ruamel.yaml import YAML

from automation.cli import main
from automation.playbook.schema import playbook_schema
from tests.conftest import ROOT

PLAYBOOKS = sorted((ROOT / "playbooks").glob("*.yaml"))
PLAYBOOKS = [p for p in PLAYBOOKS if not p.name.endswith(".test.yaml")]


def _load(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text(encoding="utf-8"))


def _errors(data: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(playbook_schema())
    return [e.message for e in validator.iter_errors(data)]


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = playbook_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"]
    assert schema["properties"]["segments"]["description"]
    assert schema["$defs"]["TaskStep"]["properties"]["due"]["default"] == "3d"


@pytest.mark.parametrize("path", PLAYBOOKS, ids=lambda p: p.name)
def test_shipped_playbooks_validate(path: Path) -> None:
    assert _errors(_load(path)) == []


@pytest.fixture
def lifecycle() -> Any:
    return _load(ROOT / "playbooks" / "lifecycle.yaml")


def test_unknown_field_is_rejected(lifecycle: Any) -> None:
    bad = copy.deepcopy(lifecycle)
    bad["segments"][0]["tuch"] = "high"
    assert any("tuch" in message for message in _errors(bad))


def test_wrong_touch_is_rejected(lifecycle: Any) -> None:
    bad = copy.deepcopy(lifecycle)
    bad["segments"][0]["touch"] = "medium"
    assert any("medium" in message for message in _errors(bad))


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("frequency_cap",), "three per week"),
        (("quiet_hours",), "late"),
        (("programs", "acquisition", "none", 1, "wait"), "3 days"),
        (("programs", "acquisition", "medium"), []),
        (("programs", "loyalty", "none", 1, "url"), "ftp://example.com"),
    ],
)
def test_bad_values_are_rejected(lifecycle: Any, where: tuple[Any, ...], value: Any) -> None:
    bad = copy.deepcopy(lifecycle)
    node = bad
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    assert _errors(bad)


def test_a_step_needs_exactly_one_kind(lifecycle: Any) -> None:
    bad = copy.deepcopy(lifecycle)
    bad["programs"]["acquisition"]["none"][0] = {"email": "welcome", "sms": "welcome"}
    assert _errors(bad)


def test_boolean_rule_is_accepted(lifecycle: Any) -> None:
    good = copy.deepcopy(lifecycle)
    good["stages"].append({"name": "everyone", "when": True})
    assert _errors(good) == []


def test_schema_command_prints_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == playbook_schema()
    out = tmp_path / "playbook.schema.json"
    result = CliRunner().invoke(main, ["schema", "--output", str(out)])
    assert result.exit_code == 0
    assert json.loads(out.read_text()) == playbook_schema()
