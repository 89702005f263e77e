"""The chart's tests run the operator too: their kwok-run Jobs publish through the stand-in
runner (tests/integration/operator/runner_standin.py)."""

from tests.integration.operator.conftest import jobs_publish

__all__ = ["jobs_publish"]
