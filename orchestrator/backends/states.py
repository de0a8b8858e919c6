"""One vocabulary of job states; each backend maps its scheduler's native states onto it."""

from __future__ import annotations

from enum import Enum


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
