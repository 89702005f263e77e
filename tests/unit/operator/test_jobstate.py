"""Reading a Job and its pods into one state, reason and message."""

from __future__ import annotations

import pytest

from kiln_operator.jobstate import view_job
from tests.unit.operator.conftest import job_obj

pytestmark = pytest.mark.unit


def test_a_job_without_a_pod_says_why_the_controller_could_not_create_one() -> None:
    quota = 'pods "x" is forbidden: exceeded quota: no-pods, requested: pods=1, limited: pods=0'
    view = view_job(job_obj("j"), [], create_failure=quota)
    assert (view.state, view.reason) == ("Blocked", "FailedCreate")
    assert view.message == f"the Job cannot create its pod: {quota}"
    waiting = view_job(job_obj("j"), [])
    assert (waiting.state, waiting.reason) == ("Pending", "PodPending")
