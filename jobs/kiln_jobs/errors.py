"""User-facing failures of a job, each with its own exit code.

The operator's Job `podFailurePolicy` fails the Job at once on the user-error codes (retrying
cannot fix a bad path or a format this GPU lacks) and retries everything else (bugs, OOM kills,
preemption, a store that stays unreachable past the retry budget).
Keep the codes stable: they are part of the operator↔job contract.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "AccuracyGateFailed",
    "AnomalousImprovement",
    "ExitCode",
    "KilnJobError",
    "MissingCredentials",
    "ResourceExhausted",
    "ServingRegression",
    "SourceNotFound",
    "SpeedGateFailed",
    "StoreUnavailable",
    "UnsupportedHardware",
    "UserError",
]


class ExitCode(IntEnum):
    """Process exit codes of `python -m kiln_jobs`."""

    OK = 0
    BUG = 1
    USER_ERROR = 2
    MISSING_CREDENTIALS = 3
    UNSUPPORTED_HARDWARE = 4
    ACCURACY_GATE_FAILED = 5
    RESOURCE_EXHAUSTED = 6
    SOURCE_NOT_FOUND = 7
    STORE_UNAVAILABLE = 8
    SERVING_REGRESSION = 9
    SPEED_GATE_FAILED = 10

    @classmethod
    def permanent(cls) -> tuple[int, ...]:
        """Codes that a retry cannot fix; the Job fails at once on them."""
        return (
            cls.USER_ERROR,
            cls.MISSING_CREDENTIALS,
            cls.UNSUPPORTED_HARDWARE,
            cls.ACCURACY_GATE_FAILED,
            cls.SOURCE_NOT_FOUND,
            cls.SERVING_REGRESSION,
            cls.SPEED_GATE_FAILED,
        )


class KilnJobError(Exception):
    """A failure the user can act on: one line of message, a distinct exit code, no traceback."""

    exit_code: ExitCode = ExitCode.USER_ERROR
    reason: str = "UserError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UserError(KilnJobError):
    """The Plan, or something it points at, is wrong in a way the user must fix."""


class MissingCredentials(KilnJobError):
    """A source needs credentials that the environment does not provide."""

    exit_code = ExitCode.MISSING_CREDENTIALS
    reason = "MissingCredentials"


class UnsupportedHardware(KilnJobError):
    """The requested format or backend cannot run on this machine's accelerator."""

    exit_code = ExitCode.UNSUPPORTED_HARDWARE
    reason = "UnsupportedHardware"


class AccuracyGateFailed(KilnJobError):
    """The optimized model degraded more than the Plan allows; nothing was published."""

    exit_code = ExitCode.ACCURACY_GATE_FAILED
    reason = "AccuracyGateFailed"


class AnomalousImprovement(AccuracyGateFailed):
    """The optimized model scored better than the baseline by more than the standard error on a
    task, and nothing else failed: suspect the measurement before publishing."""

    reason = "AnomalousImprovement"


class ServingRegression(KilnJobError):
    """The served model scored below the published model's in-process score by more than the
    Plan allows: export, runtime or KV cache lose what the gate measured."""

    exit_code = ExitCode.SERVING_REGRESSION
    reason = "ServingRegression"


class SpeedGateFailed(KilnJobError):
    """The served optimized model is not as much faster than the original as the Plan asks."""

    exit_code = ExitCode.SPEED_GATE_FAILED
    reason = "SpeedGateFailed"


class ResourceExhausted(KilnJobError):
    """Out of GPU/host memory or disk space."""

    exit_code = ExitCode.RESOURCE_EXHAUSTED
    reason = "ResourceExhausted"


class SourceNotFound(KilnJobError):
    """A model or dataset source does not exist or cannot be reached."""

    exit_code = ExitCode.SOURCE_NOT_FOUND
    reason = "SourceNotFound"


class StoreUnavailable(KilnJobError):
    """A store kept answering 5xx or timing out through every retry; the Job tries again."""

    exit_code = ExitCode.STORE_UNAVAILABLE
    reason = "StoreUnavailable"
