"""Exit codes of every maectl process, in one place: the engine's entry point, the job runner,
the backends' task-side wrappers and the CLI all use these, and `maectl status` explains them.

A scheduler decides on retries by these: `BAD_INPUT` means no retry can help (a bad config, bad
data, an import error); `PREEMPTED` means a checkpoint was written and the job wants to come back.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1  # an application error (NCCL timeout, bad node, a bug): worth a bounded retry
    BAD_INPUT = 2  # usage error, bad config or data: never retried
    PREEMPTED = 3  # stopped on request (signal) after writing a checkpoint
    NON_FINITE_LOSS = 4  # the loss went NaN/inf; the last good checkpoint is named in the log
    TOO_MANY_RESTARTS = 5  # restarted more often than the job's limit allows
    DEPENDENCY_FAILED = 6  # not run: a job it follows did not complete
    INTERRUPTED = 130  # Ctrl-C / SIGINT
    TERMINATED = 143  # SIGTERM

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]

    @property
    def retryable(self) -> bool:
        """Whether running the same job again (from its latest checkpoint) can succeed."""
        return self in (ExitCode.FAILED, ExitCode.PREEMPTED, ExitCode.TERMINATED)


_MEANINGS = {
    ExitCode.OK: "done",
    ExitCode.FAILED: "failed (an application error)",
    ExitCode.BAD_INPUT: "bad config or input",
    ExitCode.PREEMPTED: "stopped on request after a checkpoint",
    ExitCode.NON_FINITE_LOSS: "non-finite loss",
    ExitCode.TOO_MANY_RESTARTS: "restarted more often than the job's limit allows",
    ExitCode.DEPENDENCY_FAILED: "not run: a job it follows did not complete",
    ExitCode.INTERRUPTED: "interrupted (SIGINT)",
    ExitCode.TERMINATED: "terminated (SIGTERM)",
}


def describe(code: int | None) -> str:
    """`exit code N (meaning)` for any code, known or not."""
    if code is None:
        return "no exit code"
    try:
        return f"exit code {code} ({ExitCode(code).meaning})"
    except ValueError:
        return f"exit code {code}"
