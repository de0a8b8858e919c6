"""Following a job in the foreground (`submit --wait`, `maectl demo`): its log lines, a progress
bar fed by the engine's `step N/TOTAL` lines, and the job's outcome as the exit code."""

from __future__ import annotations

import re
import sys

from mae_core.exitcodes import ExitCode

from .backends import JobState, get_backend
from .backends.states import exit_status
from .store import JobRecord, open_store

_STEP = re.compile(r"step (\d+)/(\d+)")


def follow(record: JobRecord) -> int:
    """Stream the job's output until it ends; Ctrl-C cancels it. Returns 0 when it completed,
    130 (INTERRUPTED) after a Ctrl-C, else the job's exit status (backends.states.exit_status)."""
    from .submission import refresh

    store = open_store()
    backend = get_backend(record.backend)
    interrupted = False
    try:
        if sys.stdout.isatty():
            _follow_with_bar(backend, record)
        else:
            for line in backend.logs(record, follow=True):
                sys.stdout.write(line)
                sys.stdout.flush()
    except KeyboardInterrupt:
        interrupted = True
        print(f"\ninterrupted: cancelling {record.handle} ...", file=sys.stderr, flush=True)
        store.update(record.handle, cancel_requested=True)
        backend.cancel(store.get(record.handle))
    final = refresh(store.get(record.handle), store)
    style = final.state.style
    from .commands._common import console

    detail = f" ({final.message})" if final.message and final.state != JobState.COMPLETED else ""
    console(stderr=True).print(f"job {final.handle}: [{style}]{final.state.value}[/]{detail}")
    if interrupted and final.state == JobState.CANCELLED:
        return ExitCode.INTERRUPTED
    return exit_status(final.state, final.exit_code)


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
