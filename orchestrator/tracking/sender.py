"""The one thread that talks to the tracking server for a run, so that the training loop never does.

The loop hands over metrics (an append under a lock) and jobs (artifact uploads, the model, the
run's end) and goes on. The sender sends metrics in `log_batch` calls of up to 1000, then runs
the next job, in the order handed over. A call that fails because the server is down, hangs or
answers 5xx/429 is retried with a capped backoff until it goes through; one the server refuses
(4xx: a bad value) is dropped with a warning, as retrying cannot help. Metrics wait in a bounded
buffer: beyond `max_buffered` the oldest are dropped and counted (rank 0 also writes every metric
to <output_dir>/metrics.jsonl).

`drain(idle_timeout_s)` is the flush at the end: it waits while the sender gets things through and
gives up only after `idle_timeout_s` without one successful call.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from ._common import BATCH_LIMITS, warn

MAX_BUFFERED = 200_000  # metrics kept while the server is unreachable; older ones are dropped
BACKOFF_S = (0.5, 1.0, 2.0, 5.0)  # between retries of one call; the last repeats


class Refused(Exception):
    """A job found that it can never succeed (not a server outage): drop it, do not retry."""


def retryable(err: BaseException) -> bool:
    """True for trouble that passes (server down, hung, overloaded), False for a refusal."""
    if isinstance(err, Refused | FileNotFoundError | IsADirectoryError):
        return False
    if isinstance(err, MlflowException):
        status = err.get_http_status_code()
        return status >= 500 or status == 429
    return True  # connection errors, timeouts, anything unexpected from the transport


class Sender:
    """`send_metrics(batch)` and each job run on the sender's thread, never on the caller's."""

    def __init__(self, send_metrics: Callable[[list[Metric]], None], *, name: str = "maectl-tracking",
                 max_buffered: int = MAX_BUFFERED, batch_size: int = BATCH_LIMITS["metrics"]):
        self._send_metrics = send_metrics
        self.max_buffered, self.batch_size = max_buffered, batch_size
        self._cond = threading.Condition()
        self._metrics: deque[Metric] = deque()
        self._jobs: deque[tuple[str, Callable[[], None]]] = deque()
        self._busy = False  # a batch or job is out of the queues, being sent
        self._hold = True  # metrics wait until `release()` (the run exists and knows its replayed steps)
        self._wake = False
        self.dropped = 0  # metrics dropped for the buffer's bound
        self.failed: list[str] = []  # jobs given up on (refused by the server)
        self.last_progress = time.monotonic()
        self.outage_since: float | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- the caller's side: O(1), no I/O ------------------------------------------------------
    def add_metrics(self, metrics: list[Metric], *, now: bool = False) -> None:
        with self._cond:
            self._metrics.extend(metrics)
            over = len(self._metrics) - self.max_buffered
            if over > 0:
                for _ in range(over):
                    self._metrics.popleft()
                self.dropped += over
            if now or len(self._metrics) >= self.batch_size:
                self._wake = True
                self._cond.notify_all()

    def add_job(self, what: str, job: Callable[[], None], *, first: bool = False) -> None:
        with self._cond:
            (self._jobs.appendleft if first else self._jobs.append)((what, job))
            self._wake = True
            self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self._hold = False
            self._wake = True
            self._cond.notify_all()

    def pending(self) -> tuple[int, int]:
        """(metrics, jobs) not yet sent, the one in flight included."""
        with self._cond:
            return len(self._metrics), len(self._jobs) + int(self._busy)

    def drain(self, idle_timeout_s: float) -> bool:
        """Wait until everything handed over has been sent; False if the server made no progress
        for `idle_timeout_s` (what is left is then given up)."""
        with self._cond:
            self._wake = True
            self._cond.notify_all()
            while self._metrics and not self._hold or self._jobs or self._busy:
                if time.monotonic() - self.last_progress >= idle_timeout_s:
                    return False
                self._cond.wait(0.2)
            return not self._metrics

    # -- the sender's thread -------------------------------------------------------------------
    def _next(self):
        with self._cond:
            while True:
                if self._metrics and not self._hold:
                    n = min(self.batch_size, len(self._metrics))
                    batch = [self._metrics.popleft() for _ in range(n)]
                    self._busy = True
                    return "metrics", batch
                if self._jobs:
                    self._busy = True
                    return self._jobs.popleft()
                self._wake = False
                # Metrics are sent in batches: wait for a full one, a wake-up, or 1 s.
                self._cond.wait_for(lambda: self._wake, timeout=1.0)
                if not self._metrics and not self._jobs:
                    continue

    def _run(self) -> None:
        while True:
            what, item = self._next()
            attempt = 0
            while True:
                try:
                    if what == "metrics":
                        self._send_metrics(item)
                    else:
                        item()
                    self._progress()
                    break
                except BaseException as err:  # noqa: BLE001 — nothing may kill this thread
                    if not retryable(err):
                        warn(f"{what}: refused by the tracking server, not retried: {err}")
                        if what != "metrics":
                            self.failed.append(what)
                        self._progress()
                        break
                    if self.outage_since is None:
                        self.outage_since = time.monotonic()
                        warn(f"{what}: the tracking server does not answer ({str(err)[:300]}); "
                             "retrying in the background, training goes on")
                    delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
                    attempt += 1
                    time.sleep(delay)
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _progress(self) -> None:
        if self.outage_since is not None:
            warn(f"the tracking server answers again after {time.monotonic() - self.outage_since:.0f} s; sending what waited")
            self.outage_since = None
        with self._cond:
            self.last_progress = time.monotonic()
            self._cond.notify_all()
