"""Which API errors the operator treats as the end of a resource rather than a failure."""

from __future__ import annotations

import json

from kubernetes.client.exceptions import ApiException

from kiln_operator.kube import namespace_terminating


def _error(status: int, body: object) -> ApiException:
    error = ApiException(status=status, reason="Forbidden")
    error.body = body if isinstance(body, str) else json.dumps(body)
    return error


def test_a_write_into_a_terminating_namespace_is_recognised() -> None:
    body = {
        "kind": "Status",
        "reason": "Forbidden",
        "details": {"causes": [{"reason": "NamespaceTerminating", "field": "metadata.namespace"}]},
        "code": 403,
    }
    assert namespace_terminating(_error(403, body))


def test_other_refusals_are_not() -> None:
    rbac = {"kind": "Status", "reason": "Forbidden", "details": {"name": "x"}, "code": 403}
    assert not namespace_terminating(_error(403, rbac))
    assert not namespace_terminating(_error(403, "not json"))
    assert not namespace_terminating(_error(404, {"details": {"causes": []}}))
    assert not namespace_terminating(ApiException(status=403))
