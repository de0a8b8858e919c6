"""`maectl list`: the experiment files, and the submitted jobs with their state."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("list", help="list experiment files and submitted jobs")
    parser.add_argument("--jobs", action="store_true", help="only the jobs")
    parser.add_argument("--experiments", action="store_true", help="only the experiment files")
    parser.add_argument("-n", "--limit", type=int, default=20, help="most recent jobs to show (default 20, 0: all)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from ._common import console

    out = console()
    both = not args.jobs and not args.experiments
    if args.experiments or both:
        out.print(_experiments_table())
    if args.jobs or both:
        sweeps = _sweeps_table(args.limit)
        if sweeps is not None:
            out.print(sweeps)
        out.print(_jobs_table(args.limit))
    return 0


def _summary(tree: dict) -> tuple[str, str, str, str]:
    """(task, model, epochs, resources) from a merged file, without full validation (fast)."""
    from ..resources import Resources

    def get(section, key, default="-"):
        value = tree.get(section)
        return value.get(key, default) if isinstance(value, dict) else default

    task = str(tree.get("task", "pretrain"))
    try:
        resources = Resources(**(tree.get("resources") or {})).describe()
    except Exception:  # noqa: BLE001 — `maectl show` reports the problem with its key
        resources = "[red]invalid[/]"
    return task, str(get("model", "name")), str(get("train", "epochs")), resources


def _experiments_table():
    from rich.table import Table

    from ..errors import UsageError
    from ..experiments import find_experiments, load_tree

    table = Table("experiment", "task", "model", "epochs", "resources", "description", title="experiments", title_justify="left")
    for name, path in find_experiments().items():
        try:
            tree = load_tree(path).data
        except UsageError as err:
            table.add_row(name, "[red]error[/]", "", "", "", str(err))
            continue
        task, model, epochs, resources = _summary(tree)
        description = str(tree.get("description", ""))
        plan = _plan_summary(tree)
        table.add_row(f"[bold]{name}[/]", task, model, epochs, resources, f"{description} [cyan]{plan}[/]" if plan else description)
    return table


def _plan_summary(tree: dict) -> str:
    """`sweep: 6 points over model.mask_ratio; then finetune-vit-l, linprobe-vit-l`, from the raw file."""
    parts = []
    sweep = tree.get("sweep")
    if isinstance(sweep, dict) and sweep:
        points = 1
        for values in sweep.values():
            points *= len(values) if isinstance(values, list) else 1
        parts.append(f"sweep: {points} points over {', '.join(map(str, sweep))}")
    pipeline = tree.get("pipeline")
    then = pipeline.get("then") if isinstance(pipeline, dict) else None
    if isinstance(then, list) and then:
        parts.append("then " + ", ".join(str(t.get("experiment") if isinstance(t, dict) else t) for t in then))
    return "; ".join(parts)


def _sweeps_table(limit: int):
    """The recent sweeps with their points' states; None when there are none (no empty table)."""
    from collections import Counter

    from rich.table import Table

    from ..store import open_store
    from ..submission import refresh
    from ._common import ago

    store = open_store()
    sweeps = store.list_sweeps(limit=limit or None)
    if not sweeps:
        return None
    table = Table("sweep", "experiment", "backend", "points", "grid", "states", "submitted", title="sweeps", title_justify="left")
    for sweep in sweeps:
        jobs = [refresh(job, store) for job in store.jobs_where(sweep_id=sweep.sweep_id)]
        counts = Counter(job.state for job in jobs)
        states = ", ".join(f"[{state.style}]{n} {state.value}[/]" for state, n in sorted(counts.items(), key=lambda kv: kv[0].value))
        grid = "; ".join(f"{key} x{len(values)}" for key, values in sweep.axes)
        table.add_row(f"[bold]{sweep.sweep_id}[/]", sweep.experiment, sweep.backend, str(len(sweep.points)), grid, states, ago(sweep.created_at))
    return table


def _jobs_table(limit: int):
    from rich.table import Table

    from ..store import open_store
    from ..submission import refresh
    from ._common import ago, duration

    store = open_store()
    table = Table("job", "experiment", "backend", "state", "submitted", "ran", "part of", "output", title="jobs", title_justify="left")
    jobs = store.list(limit=limit or None)
    for job in jobs:
        job = refresh(job, store)
        part_of = " ".join(x for x in (job.sweep_id or "", f"after {job.after}" if job.after else "") if x) or "-"
        table.add_row(f"[bold]{job.handle}[/]", job.experiment, job.backend, f"[{job.state.style}]{job.state.value}[/]",
                      ago(job.created_at), duration(job.created_at, job.finished_at), part_of, job.output_dir)
    if not jobs:
        table.caption = "no jobs yet: maectl submit NAME (or maectl demo)"
    return table
