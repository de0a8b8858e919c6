"""`maectl sweep NAME|PATH [KEY=V1,V2,...] [KEY=VALUE ...] [--backend B] [--dry-run] [--wait]`."""

from __future__ import annotations

import sys
import time


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep", help="run an experiment once per point of a grid: one job each, under one MLflow parent run",
        description="Expand a grid (KEY=V1,V2,... on the command line and/or the file's `sweep:` block; the grid is the product), "
                    "validate every point, then submit one job per point. KEY=VALUE (one value) is an override shared by all points.",
        epilog="example: maectl sweep pretrain-vit-tiny-demo model.mask_ratio=0.5,0.75,0.9 train.epochs=2 --dry-run",
    )
    parser.add_argument("experiment", help="experiment name (see `maectl list`) or path to a YAML file")
    parser.add_argument("arguments", nargs="*", metavar="KEY=V1,V2,...", help="an axis of the grid, or KEY=VALUE for every point")
    parser.add_argument("--backend", choices=["local", "slurm", "ray"], help="default: the experiment's `backend:` (local)")
    parser.add_argument("--dry-run", action="store_true", help="print every point's job exactly; submit and record nothing")
    parser.add_argument("--wait", action="store_true", help="stay until every job of the sweep has ended; exit 0 if all completed")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from ..sweeps import plan, render_dry_run, submit

    if args.dry_run:
        sweep = plan(args.experiment, args.arguments, backend=args.backend, dry_run=True)
        sys.stdout.write(render_dry_run(sweep))
        from ..submission import placeholders

        legend = ", ".join(f"{token} = {real}" for real, token in sorted(placeholders(sweep.first.resolved).mapping, key=lambda kv: kv[1]))
        print(f"# dry-run: nothing submitted or recorded. {legend}", file=sys.stderr)
        return 0
    sweep, record, jobs, followups = submit(args.experiment, args.arguments, backend=args.backend, say=_say)
    print_submitted(sweep, record, jobs, followups)
    if args.wait:
        handles = [j.handle for j in jobs] + [f.handle for group in followups for f in group]
        return follow_jobs(handles)
    return 0


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def print_submitted(sweep, record, jobs, followups) -> None:
    from rich.table import Table

    from ..experiments import format_value
    from ..submission import mlflow_ui_hint
    from ._common import console

    out = console()
    first = sweep.first.resolved
    out.print(f"[bold green]submitted sweep[/] [bold]{record.sweep_id}[/]: {len(jobs)} point(s) of {record.experiment} ({record.source}) "
              f"on {record.backend}, {first.spec.resources.describe()} each")
    table = Table("#", *(key for key, _ in sweep.axes), "job", "state", *(["then"] if any(followups) else []), box=None, pad_edge=False)
    for point, job, group in zip(sweep.points, jobs, followups):
        cells = [str(point.index + 1), *(format_value(point.values[key]) for key, _ in sweep.axes), job.handle,
                 f"[{job.state.style}]{job.state.value}[/]" + (f" ({job.message})" if job.message else "")]
        if any(followups):
            cells.append(", ".join(f"{f.handle} ({f.experiment})" for f in group))
        table.add_row(*cells)
    out.print(table)
    if sweep.fixed:
        out.print(f"  fixed    {' '.join(sweep.fixed)}", markup=False)
    out.print(f"  output   {first.output_root}/{first.name}/<job>", markup=False)
    out.print(f"  status   maectl status {record.sweep_id}", markup=False)
    if record.tracking_uri:
        parent = f"parent run {record.parent_run_id}" if record.parent_run_id else "no parent run (see the warning above)"
        out.print(f"  MLflow   experiment {record.tracking_experiment!r}, {parent}: "
                  f"{mlflow_ui_hint(sweep.first.request.spec.tracking.uri)}", markup=False)


def follow_jobs(handles: list[str], poll_s: float = 2.0) -> int:
    """Wait for several jobs, printing each state change; Ctrl-C cancels those still going.
    Exit code 0 if every job completed, else the first job's non-zero exit status (130 when interrupted)."""
    from mae_core.exitcodes import ExitCode

    from ..backends import JobState, get_backend
    from ..backends.states import exit_status
    from ..store import open_store
    from ..submission import refresh
    from ._common import console

    store, out = open_store(), console(stderr=True)
    seen: dict[str, JobState] = {}
    try:
        while True:
            jobs = [refresh(store.get(h), store) for h in handles]
            for job in jobs:
                if seen.get(job.handle) != job.state:
                    seen[job.handle] = job.state
                    detail = f" ({job.message})" if job.message and job.state != JobState.COMPLETED else ""
                    out.print(f"{time.strftime('%H:%M:%S')}  {job.handle}  {job.experiment}: [{job.state.style}]{job.state.value}[/]{detail}")
            if all(j.state.terminal for j in jobs):
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        out.print("interrupted: cancelling the jobs that have not ended ...")
        for handle in handles:
            job = store.get(handle)
            if not job.state.terminal:
                job = store.update(handle, cancel_requested=True)
                get_backend(job.backend).cancel(job)
        return ExitCode.INTERRUPTED
    done = sum(j.state == JobState.COMPLETED for j in jobs)
    out.print(f"{done}/{len(jobs)} job(s) completed")
    return next((code for code in (exit_status(j.state, j.exit_code) for j in jobs) if code), 0)
