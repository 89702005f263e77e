"""`kiln report`: where the report comes from, and the status it can fall back on."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln_jobs.errors import UserError
from kiln_jobs.publish import DirectoryStore
from kiln_operator.config import OperatorConfig
from kiln_operator.reconcile import decide
from kiln_operator.report_view import save_report, save_serving_report
from tests.unit.jobs.test_publish import _manifest, _plan, _stage_files
from tests.unit.jobs.test_report import _task
from tests.unit.operator.conftest import make_body
from tests.unit.operator.test_reconcile import NOW, _prepared, _succeeded

pytestmark = pytest.mark.unit

_CLOZE = _task("cloze", 0.825, 0.35, False, "AboveMaxDrop")


def _resource(status: dict) -> dict:
    return {**make_body(), "status": status}


def test_a_published_plan_names_its_report_in_status(config: OperatorConfig) -> None:
    prepared = _prepared(config)
    status = decide(prepared, _succeeded(prepared), config, NOW).status
    root = f"pvc://artifacts/kiln/{prepared.plan_hash}"
    assert {a["name"]: a["uri"] for a in status["artifacts"]} == {
        "checkpoint": f"{root}/checkpoint",
        "triton": f"{root}/triton",
        "report": f"{root}/report/report.md",
    }


def test_a_pvc_store_renders_the_report_from_status(config: OperatorConfig, tmp_path: Path) -> None:
    prepared = _prepared(config)
    status = decide(prepared, _succeeded(prepared), config, NOW).status
    path, note = save_report(_resource(status), tmp_path)
    assert note is not None and "pvc://artifacts/kiln/" in note and "cannot read" in note
    text = path.read_text()
    assert "**passed the accuracy gate**" in text
    assert "| perplexity (lower is better) | 23.760 | 24.200 | +1.85% |" in text
    assert "| ptq | Succeeded | 5.7 |  |" in text
    assert not list(path.parent.glob("*.png"))


def test_a_failed_gate_is_reported_from_status_with_every_attempt(tmp_path: Path) -> None:
    status = {
        "planHash": "abc",
        "phase": "Failed",
        "techniques": "ptq(int8_sq)",
        "metrics": {
            "baselinePerplexity": 21.09,
            "perplexity": 348.7,
            "tasks": [_CLOZE.model_dump()],
        },
        "attempts": [
            {
                "techniques": "ptq(int8_sq)",
                "degradationPercent": 1547.0,
                "passed": False,
                "tasks": [_CLOZE.model_dump()],
            }
        ],
        "conditions": [
            {
                "type": "Optimized",
                "status": "False",
                "reason": "AccuracyGateFailed",
                "message": "x",
                "lastTransitionTime": NOW,
            },
            {
                "type": "Stalled",
                "status": "True",
                "reason": "AccuracyGateFailed",
                "message": "cloze acc 0.350 is 0.475 below 0.825",
                "lastTransitionTime": NOW,
            },
        ],
    }
    path, note = save_report(_resource(status), tmp_path)
    assert note and "nothing is published" in note
    text = path.read_text()
    assert "**nothing was published**." in text
    assert "> cloze acc 0.350 is 0.475 below 0.825" in text
    assert "| 1 | ptq(int8_sq) |  | +1547.00% | 0/1 |  | failed |" in text
    assert "| **failed** | stderr ±0.060 AboveMaxDrop |" in text


def test_a_readable_store_gives_the_published_report_checked(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store = DirectoryStore(store_dir)
    plan = _plan(store.uri)
    staging = store.staging(plan.hash())
    _stage_files(staging)
    (staging / "report").mkdir()
    (staging / "report" / "report.md").write_text("# the published one\n")
    store.commit(staging, _manifest(staging, plan))
    uri = f"{store.uri}/{plan.hash()}/report/report.md"
    status = {"planHash": plan.hash(), "artifacts": [{"name": "report", "uri": uri}]}

    path, note = save_report(_resource(status), tmp_path / "out")
    assert note is None
    assert path.read_text() == "# the published one\n"
    assert not (tmp_path / "out" / "checkpoint").exists()  # only the report is fetched

    (store_dir / plan.hash() / "report" / "report.md").write_text("# changed after publishing\n")
    with pytest.raises(UserError, match="does not match the manifest"):
        save_report(_resource(status), tmp_path / "again")


def test_what_the_served_revision_measured_is_its_own_report(tmp_path: Path) -> None:
    status = {
        "planHash": "abc",
        "servingRuntime": "tensorrtllm-pytorch",
        "metrics": {
            "served": [{"name": "cloze", "metric": "exact_match", "inProcess": 0.4,
                        "served": 0.2, "samples": 40, "passed": False}],
            "performance": [{"concurrency": 4, "requests": 8, "ttftP50Ms": 120.0,
                             "ttftP95Ms": 300.0, "itlP50Ms": 40.0,
                             "outputTokensPerSecond": 95.5, "requestsPerSecond": 2.0}],
        },
    }  # fmt: skip
    path = save_serving_report(_resource(status), tmp_path)
    assert path is not None and path.name == "serving.md"
    text = path.read_text()
    assert "cloze" in text and "0.400" in text and "0.200" in text and "ServingRegression" in text
    assert "95.5" in text
    assert (path.parent / "serving.png").is_file()
    assert save_serving_report(_resource({"planHash": "abc"}), tmp_path / "none") is None
