"""The committed CRD is exactly what the pydantic API generates, and it is structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kiln_operator.crd import crd, crd_yaml

pytestmark = pytest.mark.unit

COMMITTED = Path(__file__).parents[3] / "crds" / "modeloptimizations.kiln.dev.yaml"


def test_committed_crd_matches_the_api() -> None:
    assert COMMITTED.read_text() == crd_yaml(), "crds/ drifted from the API: run `make crds`"


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, child in node.get("properties", {}).items():
            found += _walk(child, f"{path}.{key}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                found += _walk(node[key], f"{path}[{key}]")
    return found


def _schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_schema_is_structural() -> None:
    for path, node in _walk(_schema()):
        assert "$ref" not in node, path
        assert "title" not in node, path
        assert "default" not in node, path
        assert node.get("additionalProperties") is not False, path
        if node.get("x-kubernetes-int-or-string"):
            continue
        assert "anyOf" not in node, path
        assert "type" in node or path == "", f"{path} has no type"
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path


def test_every_spec_field_is_described() -> None:
    spec = _schema()["properties"]["spec"]
    for path, node in _walk(spec):
        if path.endswith("]") and node.get("type") != "object":
            continue  # list items and map values of a scalar type are described by their field
        assert node.get("description"), f"spec{path} has no description for kubectl explain"


def test_names_and_columns() -> None:
    names = crd()["spec"]["names"]
    assert names["shortNames"] == ["mopt"] and names["categories"] == ["kiln"]
    version = crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:4] == ["Phase", "Techniques", "Progress", "Degradation"]
    assert "Ready" in columns and columns[-1] == "Age"


def test_conditions_are_a_map_list() -> None:
    conditions = _schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_cel_rules_are_present() -> None:
    text = yaml.safe_dump(crd())
    assert text.count("x-kubernetes-validations") >= 8


def test_defaults_are_documented_not_applied() -> None:
    engine = _schema()["properties"]["spec"]["properties"]["engine"]["properties"]
    assert engine["backend"]["description"].endswith("Defaults to pytorch.")
