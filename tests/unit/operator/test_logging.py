"""The operator's JSON log lines: one object per line, whatever kopf attaches to a record."""

from __future__ import annotations

import json
import logging

import kopf

from kiln_operator.main import json_log_formatter


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "kopf.objects", logging.ERROR, __file__, 1, "failed: %s", ("x",), None
    )
    record.__dict__.update(extra)
    return record


def test_a_kopf_object_record_is_one_json_line_with_its_reference() -> None:
    ref = {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "ModelOptimization",
        "name": "m",
        "namespace": "ns",
    }
    line = json_log_formatter().format(
        _record(settings=kopf.OperatorSettings(), k8s_skip=False, k8s_ref=ref)
    )
    assert "\n" not in line
    out = json.loads(line)
    assert out["message"] == "failed: x"
    assert out["levelname"] == "ERROR"
    assert out["object"] == ref
    assert "settings" not in out and "k8s_skip" not in out


def test_an_unserialisable_extra_is_written_as_text() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque"

    out = json.loads(json_log_formatter().format(_record(thing=Opaque())))
    assert out["thing"] == "opaque"
