"""The one exception family that the CLI turns into a single clear line (exit code 2 for user mistakes)."""

from typing import Any, Dict, Optional


class HvdatError(Exception):
    """A failure hvdat can explain. `hint` says what to do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        first, *rest = super().__str__().split("\n", 1)
        return "\n".join([f"{first}; {self.hint}" if self.hint else first, *rest])  # lines added later stay whole


class UsageError(HvdatError):
    """The user asked for something that cannot work (bad name, bad value, missing file)."""

    exit_code = 2


def require_at_least(option: str, value: Optional[float], least: float = 1) -> None:
    """The one check of a counted or timed option (workers, epochs, nodes, seconds): `value` (None: unset, fine)
    >= `least`; NaN is refused too."""
    if value is not None and not value >= least:
        raise UsageError(f"{option} must be >= {least}, got {value}")


class JobFailed(HvdatError):
    """A launched Horovod job exited non-zero. Carries the job's own exit code, and `report`: the same as fields
    (`--json`), e.g. the failing rank, its host and cause, and the way back."""

    def __init__(self, message: str, exit_code: int, hint: str = "", report: Optional[Dict[str, Any]] = None):
        super().__init__(message, hint)
        self.exit_code = exit_code
        self.report: Dict[str, Any] = dict(report or {})

    def then(self, lines: str, **fields: Any) -> None:
        """Append lines to the message (what the job kind adds: the way back) and fields to the report."""
        self.args = (self.args[0] + lines,)
        self.report.update(fields)
