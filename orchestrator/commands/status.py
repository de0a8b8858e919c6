"""`maectl status JOB`: one job in detail — state, where its things are, its latest metrics.
`maectl status SWEEP`: a sweep's points, one line each, with their follow-ups' accuracies.

Exit status (also with --json): 0 while a job is pending or running and when it completed; a
failed job's own exit code (1 if it has none); 143 for a cancelled job, 6 for one never run
because a job it follows did not complete (backends.states.exit_status). For a sweep: the
first non-zero status of its jobs, in grid order.
"""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "status", help="show one job's state, locations and latest metrics (or a sweep's points)",
        description="Show a job's or a sweep's state. Exits 0 for a completed or running job, non-zero for a failed (its exit "
                    "code, else 1) or cancelled (143; 6: never ran) one.")
    parser.add_argument("job", help="job handle or sweep id (a unique prefix will do)")
    parser.add_argument("--json", action="store_true", help="print the job (or the sweep and its jobs) as JSON, for scripts")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from rich.table import Table

    from ..backends.states import exit_status
    from ..store import open_store
    from ..submission import find_job, mlflow_ui_hint, refresh
    from ..sweeps import find_sweep
    from ._common import ago, console, duration, latest_values, read_metrics, read_run_id

    store = open_store()
    sweep = find_sweep(store, args.job)
    if sweep is not None:
        jobs = _sweep_jobs(sweep, store)
        if args.json:
            _print_json(_sweep_json(sweep, jobs, store))
        else:
            console().print(_sweep_table(sweep, jobs, store))
        return next((code for code in (exit_status(j.state, j.exit_code) for j in jobs.values()) if code), 0)
    job = refresh(find_job(store, args.job), store)
    if args.json:
        _print_json(_job_json(job, store))
        return exit_status(job.state, job.exit_code)
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
    if job.sweep_id:
        sweep = store.get_sweep(job.sweep_id)
        point = next((p for p in (sweep.points if sweep else []) if p["handle"] == job.handle), None)
        table.add_row("sweep", f"{job.sweep_id}" + (f", point {sweep.points.index(point) + 1}/{len(sweep.points)}: {_label(point['values'])}" if point else ""))
    if job.after:
        table.add_row("after", f"{job.after} (starts from its final checkpoint once it completed)")
    for followup in store.jobs_where(after=job.handle):
        followup = refresh(followup, store)
        table.add_row("then", f"{followup.handle} {followup.experiment}: [{followup.state.style}]{followup.state.value}[/]"
                              + _top1(followup))
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
    return exit_status(job.state, job.exit_code)


def _print_json(tree) -> None:
    import json
    import sys

    from ..redact import scrub_tree

    json.dump(scrub_tree(tree), sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _job_json(job, store, *, followups: bool = True) -> dict:
    """A job's record, its MLflow run id, latest metrics and (with `followups`) its follow-ups'."""
    from ..backends.states import exit_status
    from ..submission import refresh
    from ._common import latest_values, read_metrics, read_run_id

    out = job.to_json()
    out["status_exit_code"] = exit_status(job.state, job.exit_code)
    out["mlflow_run_id"] = read_run_id(job.output_dir) if job.tracking_uri else None
    out["metrics"] = {key: {"step": step, "value": value} for key, (step, value) in latest_values(read_metrics(job.output_dir)).items()}
    if followups:
        out["followups"] = [_job_json(refresh(f, store), store, followups=False) for f in store.jobs_where(after=job.handle)]
    return out


def _sweep_jobs(sweep, store) -> dict:
    from ..submission import refresh

    # Read-only: the sweep's parent run is closed by its last point (tracking.lifecycle) or by
    # `maectl cancel`, never by looking at it.
    return {j.handle: refresh(j, store) for j in store.jobs_where(sweep_id=sweep.sweep_id)}


def _sweep_json(sweep, jobs: dict, store) -> dict:
    from collections import Counter

    sweep = store.get_sweep(sweep.sweep_id) or sweep
    points = []
    for i, point in enumerate(sweep.points):
        job = jobs.get(point["handle"])
        points.append({"index": i, "values": point["values"], "job": _job_json(job, store) if job else None})
    return {"sweep_id": sweep.sweep_id, "experiment": sweep.experiment, "source": sweep.source, "backend": sweep.backend,
            "axes": sweep.axes, "overrides": sweep.overrides, "tracking_uri": sweep.tracking_uri,
            "tracking_experiment": sweep.tracking_experiment, "parent_run_id": sweep.parent_run_id, "created_at": sweep.created_at,
            "closed_at": sweep.closed_at, "states": dict(Counter(j.state.value for j in jobs.values())), "points": points}


def _label(values: dict) -> str:
    from ..experiments import format_value

    return " ".join(f"{k}={format_value(v)}" for k, v in values.items())


def _top1(job) -> str:
    from ._common import latest_values, read_metrics

    latest = latest_values(read_metrics(job.output_dir))
    return f", eval/top1 {latest['eval/top1'][1]:.4g}" if "eval/top1" in latest else ""


# Per point, the last value of the first of these that the job logged (a column only if some point has it).
_POINT_METRICS = (("loss", ("epoch/loss", "train/loss")), ("knn/top1", ("knn/top1",)), ("eval/top1", ("eval/top1",)))


def _sweep_table(sweep, jobs: dict, store):
    from rich.table import Table

    from ..experiments import format_value
    from ..submission import mlflow_ui_hint
    from ._common import ago, duration, latest_values, read_metrics

    sweep = store.get_sweep(sweep.sweep_id) or sweep
    followups: dict[str, list] = {}
    for job in jobs.values():
        if job.after:
            followups.setdefault(job.after, []).append(job)
    stages = sorted({f.experiment for group in followups.values() for f in group})
    keys = [key for key, _ in sweep.axes]
    rows = []
    for i, point in enumerate(sweep.points):
        job = jobs.get(point["handle"])
        if job is None:
            continue
        latest = latest_values(read_metrics(job.output_dir))
        metrics = {}
        for name, candidates in _POINT_METRICS:
            found = next((latest[n] for n in candidates if n in latest), None)
            if found:
                metrics[name] = f"{found[1]:.4g}"
        cells = []
        for stage in stages:
            follow = next((f for f in followups.get(job.handle, []) if f.experiment == stage), None)
            if follow is None:
                cells.append("-")
                continue
            top1 = latest_values(read_metrics(follow.output_dir)).get("eval/top1")
            cells.append(f"{top1[1]:.4g}" if follow.state.value == "completed" and top1 else f"[{follow.state.style}]{follow.state.value}[/]")
        rows.append(([str(i + 1), *(format_value(point["values"].get(k)) for k in keys), job.handle,
                      f"[{job.state.style}]{job.state.value}[/]", duration(job.created_at, job.finished_at)], metrics, cells))
    shown = [name for name, _ in _POINT_METRICS if any(name in metrics for _, metrics, _ in rows)]
    table = Table("#", *keys, "job", "state", "ran", *shown, *(f"{stage} top1" for stage in stages),
                  title=f"sweep {sweep.sweep_id}: {sweep.experiment} ({sweep.source}) on {sweep.backend}, {len(sweep.points)} point(s), "
                        f"submitted {ago(sweep.created_at)}", title_justify="left")
    for head, metrics, cells in rows:
        table.add_row(*head, *(metrics.get(name, "-") for name in shown), *cells)
    notes = []
    if sweep.overrides:
        notes.append(f"fixed: {' '.join(sweep.overrides)}")
    if sweep.parent_run_id:
        notes.append(f"MLflow: parent run {sweep.parent_run_id} in experiment {sweep.tracking_experiment!r}"
                     + (" (ended)" if sweep.closed_at or all(j.state.terminal for j in jobs.values()) else "")
                     + f"; {mlflow_ui_hint(sweep.tracking_uri)}")
    if stages:
        notes.append("the follow-ups' final eval/top1 (%), also logged on each point's MLflow run")
    table.caption = "\n".join(notes)
    table.caption_justify = "left"
    return table
