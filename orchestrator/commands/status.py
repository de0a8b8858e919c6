"""`maectl status JOB`: one job in detail — state, where its things are, its latest metrics."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("status", help="show one job's state, locations and latest metrics")
    parser.add_argument("job", help="job handle (a unique prefix will do)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from rich.table import Table

    from ..store import open_store
    from ..submission import find_job, mlflow_ui_hint, refresh
    from ._common import ago, console, duration, latest_values, read_metrics, read_run_id

    store = open_store()
    job = refresh(find_job(store, args.job), store)
    table = Table(show_header=False, title=f"job {job.handle}", title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    state = f"[{job.state.style}]{job.state.value}[/]"
    if job.exit_code is not None or job.message:
        state += f" ({', '.join(x for x in (f'exit {job.exit_code}' if job.exit_code is not None else '', job.message or '') if x)})"
    table.add_row("state", state)
    table.add_row("experiment", f"{job.experiment} ({job.source})" + (f" {' '.join(job.overrides)}" if job.overrides else ""))
    table.add_row("backend", f"{job.backend}" + (f", id {job.native_id}" if job.native_id else ""))
    table.add_row("submitted", f"{ago(job.created_at)}, ran {duration(job.created_at, job.finished_at)}")
    table.add_row("output", job.output_dir)
    if job.log_path:
        table.add_row("log", job.log_path)
    if job.tracking_uri:
        run_id = read_run_id(job.output_dir)
        table.add_row("MLflow", f"{job.tracking_uri}, run {run_id or '(not started yet)'}")
        table.add_row("", mlflow_ui_hint(job.tracking_uri))
    latest = latest_values(read_metrics(job.output_dir))
    for key in ("train/loss", "epoch/loss", "train/epoch", "train/images_per_s", "train/eta_s", "knn/top1", "eval/top1", "eval/top5", "eval/best_top1"):
        if key in latest:
            step, value = latest[key]
            table.add_row(key, f"{value:.4g} (step {step})")
    console().print(table)
    return 0
