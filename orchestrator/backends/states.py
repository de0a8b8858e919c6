"""One vocabulary of job states; each backend maps its scheduler's native states onto it."""

from __future__ import annotations

from enum import Enum

from mae_core.exitcodes import ExitCode


class JobState(str, Enum):
    PENDING = "pending"  # accepted, not running yet (queued, starting)
    RUNNING = "running"
    REQUEUED = "requeued"  # preempted or timed out, waiting to run again from its checkpoint
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"  # the backend cannot tell right now (scheduler unreachable)

    @property
    def terminal(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)

    @property
    def style(self) -> str:
        """Colour for rich tables."""
        return {
            JobState.PENDING: "yellow", JobState.RUNNING: "cyan", JobState.REQUEUED: "yellow",
            JobState.COMPLETED: "green", JobState.FAILED: "red", JobState.CANCELLED: "magenta",
        }.get(self, "dim")


def exit_status(state: JobState, exit_code: int | None = None) -> int:
    """What `maectl status JOB` (and `submit --wait`) exits with for a job in `state`: 0 for one
    that completed or has not ended yet; for a failed one its own exit code (1 if it has none);
    for a cancelled one 143 (TERMINATED), or 6 (DEPENDENCY_FAILED) if it never ran because a job
    it follows did not complete."""
    if state == JobState.FAILED:
        return exit_code if exit_code is not None and 0 < exit_code < 256 else int(ExitCode.FAILED)
    if state == JobState.CANCELLED:
        return int(ExitCode.DEPENDENCY_FAILED if exit_code == ExitCode.DEPENDENCY_FAILED else ExitCode.TERMINATED)
    return int(ExitCode.OK)
