"""`kiln status` rendering."""

from __future__ import annotations

import pytest

from kiln_operator.status_view import progress_bar, render_status

pytestmark = pytest.mark.unit


def test_progress_bar() -> None:
    assert progress_bar(0, width=10) == "[..........]   0%"
    assert progress_bar(55, width=10) == "[######....]  55%"
    assert progress_bar(250, width=4) == "[####] 100%"


def test_render_tells_the_story() -> None:
    obj = {
        "metadata": {"name": "m", "namespace": "ns"},
        "status": {
            "phase": "Ready",
            "techniques": "ptq(fp8)",
            "planHash": "0123456789abcdef",
            "progress": {"stage": "done", "percent": 100},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "SmokeTestPassed",
                    "message": "serving at http://m-triton.ns.svc:8000",
                },
                {"type": "Optimized", "status": "True", "reason": "JobSucceeded", "message": ""},
            ],
            "stages": [{"name": "ptq", "state": "Succeeded", "seconds": 5.71}],
            "metrics": {
                "baselinePerplexity": 23.76,
                "perplexity": 24.2,
                "degradationPercent": 1.85,
                "baselineSizeBytes": 269_000_000,
                "sizeBytes": 180_000_000,
                "compressionRatio": 1.49,
                "latencyMs": 812.0,
            },
            "attempts": [{"techniques": "ptq(fp8)", "degradationPercent": 1.85, "passed": True}],
            "checkpoint": {"quantAlgo": "FP8", "kvCacheQuantAlgo": "FP8"},
            "endpoint": "http://m-triton.ns.svc:8000",
        },
    }
    text = render_status(obj)
    assert text.splitlines()[0] == "m (ns)  Ready  ptq(fp8)  plan 0123456789"
    assert "[##############################] 100%" in text
    assert "Ready        True   SmokeTestPassed" in text
    assert "ptq" in text and "5.7s" in text
    assert "23.76 → 24.20 (+1.85%)" in text
    assert "269.0 MB → 180.0 MB (1.49x smaller)" in text
    assert "ptq(fp8): +1.85% (passed the gate)" in text
    assert "checkpoint   FP8, KV cache FP8" in text


def test_render_without_status() -> None:
    assert (
        render_status({"metadata": {"name": "m", "namespace": "ns"}}) == "m (ns)  Pending  plan -"
    )
