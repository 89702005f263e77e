"""Only child events that change what Kiln decides on start a reconcile."""

from __future__ import annotations

import copy

import pytest

from kiln_operator.child_events import ChildChanges

pytestmark = pytest.mark.unit

POD = {
    "metadata": {"uid": "p1", "labels": {"a": "b"}},
    "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]},
}


def test_a_repeat_or_a_bookkeeping_change_is_not_news() -> None:
    changes = ChildChanges()
    assert changes.changed("ADDED", "Pod", POD)
    relabelled = copy.deepcopy(POD)
    relabelled["metadata"]["labels"]["c"] = "d"
    relabelled["status"]["podIP"] = "10.0.0.1"
    assert not changes.changed("MODIFIED", "Pod", relabelled)
    running = copy.deepcopy(relabelled)
    running["status"]["phase"] = "Running"
    assert changes.changed("MODIFIED", "Pod", running)


def test_waiting_reasons_and_deletions_are_news() -> None:
    changes = ChildChanges()
    assert changes.changed("ADDED", "Pod", POD)
    pulling = copy.deepcopy(POD)
    pulling["status"]["containerStatuses"] = [
        {"name": "c", "ready": False, "state": {"waiting": {"reason": "ImagePullBackOff"}}}
    ]
    assert changes.changed("MODIFIED", "Pod", pulling)
    assert changes.changed("DELETED", "Pod", pulling)
    assert changes.changed("ADDED", "Pod", pulling)  # forgotten: a new life


def test_job_and_deployment_progress_is_news() -> None:
    changes = ChildChanges()
    job = {"metadata": {"uid": "j"}, "spec": {"suspend": True}, "status": {}}
    assert changes.changed("ADDED", "Job", job)
    admitted = {**job, "spec": {"suspend": False}}
    assert changes.changed("MODIFIED", "Job", admitted)
    deployment = {"metadata": {"uid": "d", "generation": 1}, "status": {"readyReplicas": 0}}
    assert changes.changed("ADDED", "Deployment", deployment)
    ready = {**deployment, "status": {"readyReplicas": 1}}
    assert changes.changed("MODIFIED", "Deployment", ready)
    assert not changes.changed("MODIFIED", "Deployment", ready)


def test_a_burst_of_triggers_is_one_action_per_key() -> None:
    import threading
    import time

    from kiln_operator.child_events import Debouncer

    done: list[str] = []
    finished = threading.Event()

    def act(key: str) -> None:
        done.append(key)
        if len(done) == 3:
            finished.set()

    debouncer = Debouncer(act, delay=0.2)
    for _ in range(10):
        debouncer.trigger("ns/a")
        debouncer.trigger("ns/b")
    time.sleep(0.5)  # the burst ran: a later trigger is a new burst
    debouncer.trigger("ns/a")
    assert finished.wait(5)
    assert sorted(done[:2]) == ["ns/a", "ns/b"] and done[2] == "ns/a"


def test_held_actions_wait_until_released_or_held_too_long() -> None:
    import threading
    import time

    from kiln_operator.child_events import Debouncer

    held = threading.Event()
    held.set()
    ran: dict[str, float] = {}

    def act(key: str) -> None:
        ran[key] = time.monotonic()

    debouncer = Debouncer(act, delay=0.05, hold=held.is_set, max_hold=0.6)
    started = time.monotonic()
    debouncer.trigger("ns/a")
    time.sleep(0.3)
    assert "ns/a" not in ran  # held past its delay
    held.clear()
    deadline = time.monotonic() + 5
    while "ns/a" not in ran and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ran["ns/a"] - started < 1.0
    held.set()  # held again, but never longer than max_hold
    debouncer.trigger("ns/b")
    deadline = time.monotonic() + 5
    while "ns/b" not in ran and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "ns/b" in ran
