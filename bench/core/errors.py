"""One exception tree (after docker-py): every error says what failed and how to fix it."""

from __future__ import annotations

from collections.abc import Sequence


class BenchError(Exception):
    """An error a user can act on: `cause` says what went wrong, `fix` what to do about it."""

    def __init__(self, cause: str, fix: str = "") -> None:
        super().__init__(cause)
        self.cause = cause
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.cause} Fix: {self.fix}" if self.fix else self.cause


class ScenarioError(BenchError):
    """A scenario file is missing, unparsable or invalid."""


class TierUnavailable(BenchError):
    """A tier cannot run on this host."""


class ImageError(BenchError):
    """The bench image is missing or could not be built."""


class CommandError(BenchError):
    """A command exited non-zero; carries argv, exit status and stderr."""

    def __init__(
        self, argv: Sequence[str], returncode: int, stderr: str, fix: str = ""
    ) -> None:
        tail = stderr.strip().splitlines()[-5:]
        detail = (": " + " | ".join(tail)) if tail else ""
        super().__init__(f"`{' '.join(argv)}` exited with status {returncode}{detail}.", fix)
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


class CommandTimeout(BenchError):
    """A command ran past its timeout and was killed."""

    def __init__(self, argv: Sequence[str], timeout: float, stderr: str = "") -> None:
        super().__init__(
            f"`{' '.join(argv)}` ran past its {timeout:.0f} s timeout and was killed.",
            "raise the workload's `timeout_s` in the scenario, or shorten its runtime.",
        )
        self.argv = list(argv)
        self.timeout = timeout
        self.stderr = stderr


class ParseError(BenchError):
    """A tool's output could not be parsed."""


class Interrupted(BenchError):
    """The run was interrupted by a signal."""
