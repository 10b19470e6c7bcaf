"""How the dashboard answers errors: access refusals and the status of each error."""

from __future__ import annotations

from conveyor.errors import (
    ConfigurationError,
    ConveyorError,
    InvalidArgumentsError,
    InvalidStateError,
    JobNotFoundError,
)
from conveyor.web.reads import BadRequest


class Refused(Exception):
    """An access decision: answered with ``status`` (401, 403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def error_status(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and message for an error raised while serving a request."""
    if isinstance(exc, BadRequest | InvalidArgumentsError):
        return 400, str(exc)
    if isinstance(exc, JobNotFoundError | LookupError):
        return 404, str(exc) if str(exc) else "not found"
    if isinstance(exc, InvalidStateError):
        return 409, str(exc)
    if isinstance(exc, ConfigurationError):
        return 400, str(exc)
    if isinstance(exc, ConveyorError):
        return 503, f"{type(exc).__name__}: {exc}"
    return 500, "internal error"
