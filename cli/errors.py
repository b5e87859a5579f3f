"""The command's exit codes and the errors that end a command with one line on stderr.

The codes are a contract (docs/clients.md): a script tells a failed run from a stopped one, and both
from an API refusal, an unreachable API or a mistyped command.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class Exit(IntEnum):
    OK = 0  # the command did what it was asked; a followed run succeeded
    RUN_FAILED = 1  # a followed run ended `failed`
    RUN_STOPPED = 2  # a followed run ended `stopped`
    API_ERROR = 3  # the API answered with a problem document (or another error status)
    UNREACHABLE = 4  # no answer: connection refused, DNS, TLS, timeout
    USAGE = 64  # a mistyped command, a missing option, not logged in (sysexits' EX_USAGE)
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


class CliError(Exception):
    """Ends the command: `error: <message>` on stderr and `exit_code`."""

    exit_code: int = Exit.USAGE

    def line(self) -> str:
        return str(self)


class UsageProblem(CliError):
    exit_code = Exit.USAGE


class Unreachable(CliError):
    exit_code = Exit.UNREACHABLE


class ApiError(CliError):
    """An answer of 400 or more. `problem` is the API's problem document, or one made from the
    status line when the answer was not one (a proxy's HTML page, say)."""

    exit_code = Exit.API_ERROR

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        super().__init__(self.line())

    @property
    def code(self) -> str | None:
        code = self.problem.get("code")
        return code if isinstance(code, str) else None

    def line(self) -> str:
        title = str(self.problem.get("title") or f"HTTP {self.status}")
        detail = self.problem.get("detail")
        text = f"{title}: {detail}" if detail and detail != title else title
        return f"{text} ({self.code})" if self.code else f"{text} (HTTP {self.status})"
