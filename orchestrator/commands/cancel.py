"""`maectl cancel JOB`."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("cancel", help="stop a job (SIGTERM, then SIGKILL; scancel; ray job stop)")
    parser.add_argument("job", help="job handle (a unique prefix will do)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from ..backends import get_backend
    from ..store import open_store
    from ..submission import find_job, refresh
    from ._common import console

    store = open_store()
    job = refresh(find_job(store, args.job), store)
    out = console()
    if job.state.terminal:
        out.print(f"job {job.handle} already ended: [{job.state.style}]{job.state.value}[/]")
        return 0
    # Recorded first, so that a status check racing the kill reads "cancelled", not "failed".
    job = store.update(job.handle, cancel_requested=True)
    out.print(f"cancelling {job.handle} ...")
    get_backend(job.backend).cancel(job)
    job = refresh(job, store)
    out.print(f"job {job.handle}: [{job.state.style}]{job.state.value}[/]")
    return 0
