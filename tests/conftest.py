"""Suite-wide pytest configuration."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

# The real test cluster's fixtures (kube, namespace, restricted_namespace, make_namespace).
pytest_plugins = ["tests.cluster.fixtures"]


@pytest.fixture(scope="session")
def runner_standin(kube: Any) -> Iterator[Any]:
    """The stand-in runner for Jobs kwok runs (tests/integration/operator/runner_standin.py):
    one for the session, started when an operator or chart test first needs it."""
    from tests.integration.operator.runner_standin import RunnerStandIn

    standin = RunnerStandIn(kube).start()
    yield standin
    standin.stop()
