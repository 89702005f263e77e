"""Which admission requests the webhook reviews (pure; the real webhook is in integration)."""

from __future__ import annotations

import pytest

from kiln_operator.webhook import needs_review

pytestmark = pytest.mark.unit

BODY = {"metadata": {"name": "m"}, "spec": {"techniques": [{"ptq": {"format": "fp8"}}]}}


def test_creates_and_spec_changes_are_reviewed() -> None:
    assert needs_review(BODY, None, "CREATE")
    changed = {**BODY, "spec": {"techniques": [{"ptq": {"format": "int8_sq"}}]}}
    assert needs_review(changed, BODY, "UPDATE")


def test_updates_that_keep_the_spec_and_objects_being_deleted_are_admitted() -> None:
    relabelled = {"metadata": {"name": "m", "labels": {"team": "a"}}, "spec": BODY["spec"]}
    assert not needs_review(relabelled, BODY, "UPDATE")
    finalizing = {"metadata": {"name": "m", "deletionTimestamp": "2026-11-30T00:00:00Z"}}
    assert not needs_review({**finalizing, "spec": {"techniques": []}}, BODY, "UPDATE")
