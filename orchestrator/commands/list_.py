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
        table.add_row(f"[bold]{name}[/]", task, model, epochs, resources, str(tree.get("description", "")))
    return table


def _jobs_table(limit: int):
    from rich.table import Table

    from ..store import open_store
    from ..submission import refresh
    from ._common import ago, duration

    store = open_store()
    table = Table("job", "experiment", "backend", "state", "submitted", "ran", "output", title="jobs", title_justify="left")
    jobs = store.list(limit=limit or None)
    for job in jobs:
        job = refresh(job, store)
        table.add_row(f"[bold]{job.handle}[/]", job.experiment, job.backend, f"[{job.state.style}]{job.state.value}[/]",
                      ago(job.created_at), duration(job.created_at, job.finished_at), job.output_dir)
    if not jobs:
        table.caption = "no jobs yet: maectl submit NAME (or maectl demo)"
    return table
