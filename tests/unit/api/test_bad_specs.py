"""Every bad spec under tests/bad_specs is refused with a message naming the field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from kiln_operator.cli import main as kiln

pytestmark = pytest.mark.unit

BAD_SPECS = sorted((Path(__file__).parents[2] / "bad_specs").glob("*.yaml"))


def _expectation(path: Path) -> tuple[str, str]:
    header = dict(re.findall(r"^# (\w+): (.*)$", path.read_text(), re.M))
    return header["expect"], header["message"]


def test_there_are_enough_bad_specs() -> None:
    assert len(BAD_SPECS) >= 20


@pytest.mark.parametrize("path", BAD_SPECS, ids=lambda p: p.stem)
def test_bad_spec_is_refused_naming_the_field(path: Path, capsys: pytest.CaptureFixture) -> None:
    field, message = _expectation(path)
    assert kiln(["validate", "-f", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    problems = [line for line in lines if line.startswith(f"{path}: ")]
    assert len(problems) == 1, lines
    assert f": {field}: " in problems[0]
    assert message in problems[0]
    assert "Traceback" not in "\n".join(lines)


@pytest.mark.parametrize("path", BAD_SPECS, ids=lambda p: p.stem)
def test_bad_spec_is_otherwise_well_formed_yaml(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    assert document["metadata"]["name"] == "bad"


# Names Kiln cannot give its children: a Service name is a DNS-1035 label, a label value at
# most 63 characters.
BAD_NAMES = ["a" * 64, "with.dot", "1leading-digit", "Upper", "trailing-"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_name_kiln_cannot_give_its_children_is_refused(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    document = {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "ModelOptimization",
        "metadata": {"name": name},
        "spec": {"techniques": [{"ptq": {"format": "fp8"}}]},
    }
    path = tmp_path / "named.yaml"
    path.write_text(yaml.safe_dump(document))
    assert kiln(["validate", "-f", str(path)]) == 1
    assert ": metadata.name: " in capsys.readouterr().out
