"""The Argo CD health script, run in a real Lua interpreter against status fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lupa
import pytest

pytestmark = pytest.mark.unit

SCRIPT = (Path(__file__).parents[3] / "charts" / "kiln" / "files" / "argocd-health.lua").read_text()


def _lua_value(lua: lupa.LuaRuntime, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: _lua_value(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_lua_value(lua, v) for v in value])
    return value


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """Run the script as Argo CD does: `obj` is a global, the chunk returns `hs`."""
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = _lua_value(lua, obj)
    result = lua.execute(SCRIPT)
    return result["status"], result["message"]


def _obj(generation: int = 2, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "m", "generation": generation}, "status": status or None}


def _c(kind: str, status: str, reason: str = "R", message: str = "") -> dict[str, str]:
    return {"type": kind, "status": status, "reason": reason, "message": message}


def test_no_status_yet() -> None:
    assert health({"metadata": {"name": "m", "generation": 1}})[0] == "Progressing"


def test_old_generation_is_progressing_even_if_ready() -> None:
    status, message = health(
        _obj(3, observedGeneration=2, phase="Ready", conditions=[_c("Ready", "True")])
    )
    assert status == "Progressing" and "generation 3" in message


def test_ready_is_healthy() -> None:
    obj = _obj(
        observedGeneration=2,
        phase="Ready",
        conditions=[
            _c("Ready", "True", "SmokeTestPassed", "serving at http://m:8000"),
            _c("Reconciling", "False"),
            _c("Stalled", "False"),
        ],
    )
    assert health(obj) == ("Healthy", "serving at http://m:8000")


def test_stalled_is_degraded_with_the_reason() -> None:
    obj = _obj(
        observedGeneration=2,
        phase="Failed",
        conditions=[
            _c("Ready", "False"),
            _c("Reconciling", "False"),
            _c("Stalled", "True", "AccuracyGateFailed", "perplexity rose 57%"),
        ],
    )
    assert health(obj) == ("Degraded", "perplexity rose 57%")


@pytest.mark.parametrize(
    ("phase", "reason"),
    [
        ("Pending", "JobCreated"),
        ("Optimizing", "JobRunning"),
        ("Deploying", "RollingOut"),
        ("Deploying", "SmokeTesting"),
        ("Queued", "Unschedulable"),
        ("Queued", "WaitingForSlot"),
    ],
)
def test_work_in_progress_is_progressing(phase: str, reason: str) -> None:
    obj = _obj(
        observedGeneration=2,
        phase=phase,
        conditions=[
            _c("Ready", "False", reason),
            _c("Stalled", "False", reason),
            _c("Reconciling", "True", reason, f"{reason} now"),
        ],
    )
    assert health(obj) == ("Progressing", f"{reason} now")


def test_kueue_suspended_job_is_progressing_and_says_queued() -> None:
    obj = _obj(
        observedGeneration=2,
        phase="Queued",
        conditions=[
            _c("Ready", "False", "Queued"),
            _c("Reconciling", "True", "Queued", "suspended until Kueue admits it"),
        ],
    )
    status, message = health(obj)
    assert status == "Progressing" and message.startswith("Queued: ")


def test_failed_phase_without_conditions_is_degraded() -> None:
    assert health(_obj(observedGeneration=2, phase="Failed"))[0] == "Degraded"
