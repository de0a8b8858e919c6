"""`maectl report SWEEP | JOB [JOB ...] [--out DIR] [--tracking-uri URI] [--no-upload]`."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="a sweep's (or some jobs') results from MLflow: a Table-1-like table (Markdown, CSV) and an accuracy plot (PNG)",
        description="Read the runs of a sweep (or of the jobs named) from MLflow and render one row per point: the swept value(s), "
                    "the final pretraining loss and the top-1 of each follow-up the pipeline ran (linear probe, fine-tune); "
                    "and a plot of accuracy against the swept value. For a sweep the files are logged as artifacts of its "
                    "parent run (report/).",
        epilog="example: maectl report sweep-3f9a2c --out reports/mask-ratio",
    )
    parser.add_argument("targets", nargs="+", metavar="SWEEP_OR_JOB", help="a sweep id, or job handles (unique prefixes will do)")
    parser.add_argument("--out", help="folder for table.md, table.csv, plot.png (default: <maectl home>/reports/<sweep or first job>)")
    parser.add_argument("--tracking-uri", help="read from this MLflow server (default: the one the jobs logged to)")
    parser.add_argument("--no-upload", action="store_true", help="do not log the files to the sweep's parent run")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from .. import locations
    from ..errors import UsageError
    from ..report import for_jobs, for_sweep
    from ..store import open_store
    from ..submission import find_job
    from ..sweeps import find_sweep
    from ._common import console

    store = open_store()
    sweep = find_sweep(store, args.targets[0]) if len(args.targets) == 1 else None
    if sweep is not None:
        report, name = for_sweep(sweep, tracking_uri=args.tracking_uri), sweep.sweep_id
    else:
        jobs = [find_job(store, target) for target in args.targets]
        if len({j.handle for j in jobs}) != len(jobs):
            raise UsageError("a job is named twice")
        report, name = for_jobs(jobs, tracking_uri=args.tracking_uri), jobs[0].handle
    folder = args.out or str(locations.maectl_home() / "reports" / name)
    files = report.write(folder)
    out = console()
    out.print(report.markdown(), markup=False)
    for path in files:
        out.print(f"wrote {path}", markup=False)
    if report.parent_run_id and not args.no_upload:
        from ..tracking import log_report

        log_report(report.uri, report.parent_run_id, files)
        out.print(f"logged to the sweep's parent run {report.parent_run_id} under report/", markup=False)
    return 0
