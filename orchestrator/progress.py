"""Following a job in the foreground (`submit --wait`, `maectl demo`): its log lines, a progress
bar fed by the engine's `step N/TOTAL` lines, and the job's outcome as the exit code."""

from __future__ import annotations

import re
import sys

from .backends import JobState, get_backend
from .store import JobRecord, open_store

_STEP = re.compile(r"step (\d+)/(\d+)")
_EXIT_CODES = {JobState.COMPLETED: 0, JobState.CANCELLED: 130}


def follow(record: JobRecord) -> int:
    """Stream the job's output until it ends; Ctrl-C cancels it. Returns 0 when it completed."""
    from .submission import refresh

    store = open_store()
    backend = get_backend(record.backend)
    try:
        if sys.stdout.isatty():
            _follow_with_bar(backend, record)
        else:
            for line in backend.logs(record, follow=True):
                sys.stdout.write(line)
                sys.stdout.flush()
    except KeyboardInterrupt:
        print(f"\ninterrupted: cancelling {record.handle} ...", file=sys.stderr, flush=True)
        store.update(record.handle, cancel_requested=True)
        backend.cancel(store.get(record.handle))
    final = refresh(store.get(record.handle), store)
    style = final.state.style
    from .commands._common import console

    detail = f" ({final.message})" if final.message and final.state != JobState.COMPLETED else ""
    console(stderr=True).print(f"job {final.handle}: [{style}]{final.state.value}[/]{detail}")
    return _EXIT_CODES.get(final.state, final.exit_code or 1)


def _follow_with_bar(backend, record: JobRecord) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                  TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task(record.handle, total=None)
        for line in backend.logs(record, follow=True):
            bar.console.print(line.rstrip("\n"), markup=False, highlight=False)
            match = _STEP.search(line)
            if match:
                bar.update(task, completed=int(match[1]), total=int(match[2]))
