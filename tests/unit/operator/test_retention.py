"""retention: delete — which plan goes, which stays, and the Job that removes it."""

from __future__ import annotations

from typing import Any

import pytest

from kiln_operator.builders.cleanup import build_cleanup_job
from kiln_operator.config import OperatorConfig
from kiln_operator.retention import plan_cleanup
from tests.unit.operator.test_builders import assert_restricted

pytestmark = pytest.mark.unit


def _body(
    name: str,
    plan_hash: str | None,
    uid: str,
    serving: str | None = None,
    *,
    namespace: str = "ns",
    store: str = "pvc://artifacts/kiln",
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "uid": uid},
        "spec": {"artifacts": {"store": store, "retention": "delete"}},
        "status": {
            "planHash": plan_hash,
            "servingPlanHash": serving,
            "conditions": [{"type": "Optimized", "status": "True"}] if plan_hash else [],
        },
    }


def test_unshared_plan_is_removed() -> None:
    me = _body("a", "h1", "u1")
    plan = plan_cleanup(me, [me, _body("b", "h2", "u2")], None)
    assert plan.action == "remove" and plan.plan_hash == "h1"
    assert plan.store == "pvc://artifacts/kiln"


def test_plan_used_by_another_resource_is_kept() -> None:
    me = _body("a", "h1", "u1")
    plan = plan_cleanup(me, [me, _body("b", "h9", "u2", serving="h1")], None)
    assert plan.action == "keep-shared" and plan.shared_with == ("ns/b",)


def test_the_same_hash_in_another_store_does_not_keep_a_plan() -> None:
    me = _body("a", "h1", "u1")
    elsewhere = _body("b", "h1", "u2", store="s3://bucket/kiln")
    other_claim = _body("c", "h1", "u3", namespace="other")  # its own pvc://artifacts
    plan = plan_cleanup(me, [me, elsewhere, other_claim], None)
    assert plan.action == "remove"
    shared_bucket = _body("d", "h1", "u4", namespace="other", store="s3://bucket/kiln")
    plan = plan_cleanup(elsewhere, [elsewhere, shared_bucket], None)
    assert plan.action == "keep-shared" and plan.shared_with == ("other/d",)


def test_nothing_published_nothing_removed() -> None:
    assert plan_cleanup(_body("a", None, "u1"), [], None).action == "nothing"
    unfinished = _body("a", "h1", "u1")
    unfinished["status"]["conditions"] = [{"type": "Optimized", "status": "False"}]
    assert plan_cleanup(unfinished, [], None).action == "nothing"


def test_cleanup_job_is_restricted_and_short_lived() -> None:
    job = build_cleanup_job(_body("a", "h1", "u1"), "h1", "pvc://artifacts/kiln", OperatorConfig())
    spec = job["spec"]
    assert spec["ttlSecondsAfterFinished"] > 0 and "ownerReferences" not in job["metadata"]
    pod = spec["template"]["spec"]
    assert_restricted(pod)
    assert pod["containers"][0]["args"] == [
        "delete",
        "--store",
        "pvc://artifacts/kiln",
        "--plan-hash",
        "h1",
    ]
    assert pod["volumes"][1]["persistentVolumeClaim"]["claimName"] == "artifacts"
    # A namespace quota admits only pods that say what they use; scratch has a bound.
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["memory"] and resources["limits"]["memory"]
    assert pod["volumes"][0]["emptyDir"]["sizeLimit"]


def test_giving_up_on_the_artifacts_leaves_a_warning_event() -> None:
    from types import SimpleNamespace

    from kiln_operator.controller import artifacts_given_up

    events: list = []
    reconciler = SimpleNamespace(api=SimpleNamespace(post_event=lambda body, e: events.append(e)))
    body = _body("a", "h1", "u1")
    artifacts_given_up(reconciler, body, 60, RuntimeError("the cleanup Job failed"))  # type: ignore[arg-type]
    (event,) = events
    assert (event.type, event.reason) == ("Warning", "ArtifactsNotRemoved")
    assert "plan h1 after 60 tries (the cleanup Job failed)" in event.message
    assert "remove them by hand" in event.message
