"""`maectl cancel JOB|SWEEP`: stop a job, or every job of a sweep that has not ended."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("cancel", help="stop a job or a sweep's jobs (SIGTERM, then SIGKILL; scancel; ray job stop)")
    parser.add_argument("job", help="job handle or sweep id (a unique prefix will do)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from ..store import open_store
    from ..submission import find_job, refresh
    from ..sweeps import close_parent_if_ended, find_sweep
    from ._common import console

    store = open_store()
    out = console()
    sweep = find_sweep(store, args.job)
    if sweep is None:
        cancel_job(refresh(find_job(store, args.job), store), store, out)
        return 0
    jobs = [refresh(job, store) for job in store.jobs_where(sweep_id=sweep.sweep_id)]
    going = [job for job in jobs if not job.state.terminal]
    out.print(f"sweep {sweep.sweep_id}: {len(going)} of {len(jobs)} job(s) still going")
    for job in going:
        cancel_job(job, store, out)
    close_parent_if_ended(sweep, [store.get(job.handle) for job in jobs], store)
    return 0


def cancel_job(job, store, out) -> None:
    from ..backends import get_backend
    from ..submission import refresh

    if job.state.terminal:
        out.print(f"job {job.handle} already ended: [{job.state.style}]{job.state.value}[/]")
        return
    # Recorded first, so that a status check racing the kill reads "cancelled", not "failed".
    job = store.update(job.handle, cancel_requested=True)
    out.print(f"cancelling {job.handle} ...")
    get_backend(job.backend).cancel(job)
    job = refresh(job, store)
    _end_tracking(job)
    out.print(f"job {job.handle}: [{job.state.style}]{job.state.value}[/]")


def _end_tracking(job) -> None:
    """A job the scheduler killed (SLURM's SIGKILL after KillWait, a Ray stop) may not have closed
    its MLflow run: mark it KILLED now (through the tracking module, which owns the run's
    lifecycle). Killed by a cancel, rank 0 may have seen its DataLoader workers die first and
    closed the run FAILED: that becomes KILLED too. Idempotent; tracking trouble is only a warning."""
    import sys
    from pathlib import Path

    from ..jobspec import SPEC_FILE, JobSpec
    from ..redact import scrub_text

    if not job.tracking_uri:
        return
    spec_path = job.info.get("spec") or str(Path(job.job_dir) / SPEC_FILE)
    if not Path(spec_path).exists():
        return  # never launched
    try:
        from ..tracking import cancel_job_run

        cancel_job_run(JobSpec.load(spec_path).to_dict())
    except Exception as err:  # noqa: BLE001 — the job is cancelled either way
        print(f"maectl: could not mark the MLflow run KILLED: {scrub_text(str(err))[:300]}", file=sys.stderr)
