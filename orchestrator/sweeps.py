"""Sweeps: one experiment, a grid of values, one normal maectl job per point.

    maectl sweep NAME model.mask_ratio=0.5,0.75,0.9 [decoder.x=a,b] [train.epochs=100] [--backend B] [--dry-run] [--wait]

or a `sweep:` block in the file (`sweep: {model.mask_ratio: [0.5, 0.75, 0.9]}`); the grid is the
product of the axes, in the order given (the file's first, then the command line's). On the
command line a value list is split at top-level commas, so `optim.betas=[0.9,0.95]` is one value
and `optim.betas=[0.9,0.95],[0.9,0.999]` two; quote a string that holds a comma. A swept key
given a single value on the command line narrows that axis of the file's block to it.

Each point is a normal job: its own handle, output folder and MLflow run, its values applied as
overrides (set "by the sweep" in error messages). Every point, and every follow-up of a point
when the file has a `pipeline:`, is validated and checked by its backend before any is submitted:
one bad point stops the sweep with exit 2 and a message naming the point, the key and the value.

Tracking: one MLflow parent run per sweep (named by the sweep id, in the experiment's MLflow
experiment), each point's run a child of it (`mlflow.parentRunId`) tagged `sweep_id` and
`sweep_point`. The parent is marked ended by the last point to end (orchestrator/tracking.py),
or by `maectl status SWEEP` once every point's job has ended.

The store keeps the sweep (`SweepRecord`: its axes and each point's job) and each job's
`sweep_id`, so `maectl list` shows sweeps and `maectl status SWEEP` summarises the points.
"""

from __future__ import annotations

import dataclasses
import itertools
import secrets
from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError
from .experiments import check_sweep_key, format_value, parse_override, read_sweep_axes
from .jobspec import SweepPoint
from .pipelines import FollowUp, launch_followups, prepare_followups
from .store import JobRecord, JobStore, SweepRecord
from .submission import Prepared, launch_array, prepare

SWEEP_PREFIX = "sweep-"
SWEEP_PLACEHOLDER = "<sweep>"
INJECTED_BY = "the sweep"


@dataclass
class Point:
    index: int  # 0-based, in grid order
    values: dict[str, Any]
    prepared: Prepared
    followups: list[FollowUp] = field(default_factory=list)

    @property
    def label(self) -> str:
        return point_label(self.values)


@dataclass
class SweepPlan:
    sweep_id: str
    axes: list[tuple[str, list]]
    fixed: list[str]  # overrides shared by every point
    points: list[Point]

    @property
    def first(self) -> Prepared:
        return self.points[0].prepared


def point_label(values: dict[str, Any]) -> str:
    return " ".join(f"{key}={format_value(value)}" for key, value in values.items())


def new_sweep_id() -> str:
    return f"{SWEEP_PREFIX}{secrets.token_hex(3)}"


# -- the command line's axes ---------------------------------------------------------------------
def split_values(raw: str) -> list[str]:
    """Split at commas outside brackets, braces and quotes: `0.5,[1,2],'a,b'` -> 3 values."""
    parts, current, depth, quote = [], "", 0, None
    for ch in raw:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += ch
    parts.append(current)
    return parts


def parse_arguments(items: list[str]) -> tuple[list[tuple[str, list]], list[str]]:
    """`key=v1,v2` -> an axis; `key=v` -> a fixed override. Returns (axes, fixed)."""
    axes: list[tuple[str, list]] = []
    fixed: list[str] = []
    for item in items:
        if "=" not in item or item.startswith("="):
            raise UsageError(f"{item!r} is not of the form key.path=value or key.path=v1,v2,...")
        key, raw = item.split("=", 1)
        key = key.strip()
        raws = split_values(raw)
        if len(raws) == 1:
            fixed.append(item)
            continue
        if any(not r.strip() for r in raws):
            raise UsageError(f"{item!r}: empty value in the list (quote a value that holds a comma)")
        check_sweep_key(key, lambda message, k=key: UsageError(f"{item!r}: {k}: {message}"))
        values = [parse_override(f"{key}={r}")[1] for r in raws]
        for i, value in enumerate(values):
            if value in values[:i]:
                raise UsageError(f"{item!r}: value {format_value(value)} is listed twice")
        if any(k == key for k, _ in axes):
            raise UsageError(f"{key} is swept twice on the command line")
        axes.append((key, values))
    return axes, fixed


def grid(axes: list[tuple[str, list]]) -> list[dict[str, Any]]:
    """The product of the axes, the last axis varying fastest."""
    keys = [key for key, _ in axes]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values for _, values in axes))]


def merge_axes(file_axes: list[tuple[str, list]], cli_axes: list[tuple[str, list]], fixed: list[str]) -> tuple[list[tuple[str, list]], list[str]]:
    """The command line replaces a file axis of the same key (in place) or adds one; a fixed
    override of a swept key narrows that axis to its one value."""
    axes = [(key, list(values)) for key, values in file_axes]
    for key, values in cli_axes:
        for i, (existing, _) in enumerate(axes):
            if existing == key:
                axes[i] = (key, values)
                break
        else:
            axes.append((key, values))
    remaining = []
    for item in fixed:
        key = item.split("=", 1)[0].strip()
        swept = [i for i, (k, _) in enumerate(axes) if k == key]
        if swept:
            axes[swept[0]] = (key, [parse_override(item)[1]])
        else:
            remaining.append(item)
    return axes, remaining


def read_axes(target: str, cli_axes, fixed) -> tuple[list[tuple[str, list]], list[str]]:
    """The file's `sweep:` block (after the fixed overrides that touch it, so that `sweep=null` or
    `sweep.KEY=[...]` work) merged with the command line's axes. Reads YAML only: fast."""
    touching = [item for item in fixed if item.split("=", 1)[0].strip() == "sweep" or item.startswith("sweep.")]
    file_axes = read_sweep_axes(target, touching)
    axes, rest = merge_axes(file_axes, cli_axes, [item for item in fixed if item not in touching])
    return axes, [*touching, *rest]


# -- planning: everything checked, nothing submitted ---------------------------------------------
def plan(target: str, arguments: list[str], *, backend: str | None = None, dry_run: bool = False,
         store: JobStore | None = None) -> SweepPlan:
    cli_axes, fixed = parse_arguments(arguments)
    axes, fixed = read_axes(target, cli_axes, fixed)
    if not axes:
        raise UsageError(f"nothing to sweep in {target}: give KEY=V1,V2,... or a `sweep:` block in the file")
    points_values = grid(axes)
    sweep_id = SWEEP_PLACEHOLDER if dry_run else _free_sweep_id(store)
    reserved: set[str] = set()
    points: list[Point] = []
    total = len(points_values)
    for index, values in enumerate(points_values):
        where = f"sweep point {index + 1}/{total} ({point_label(values)})"
        try:
            prepared = prepare(target, fixed, backend=backend, dry_run=dry_run, store=store, injected=values,
                               injected_by=INJECTED_BY, reserved=reserved)
        except UsageError as err:
            raise UsageError(f"{where}: {err}") from None
        point = Point(index, values, prepared)
        _check_consistent(point, points[0] if points else None, where)
        try:
            point.followups = prepare_followups(prepared, dry_run=dry_run, store=store, reserved=reserved)
        except UsageError as err:
            raise UsageError(f"{where}: {err}") from None
        prepared.request.spec.sweep = SweepPoint(id=sweep_id, index=index, points=total, values=values, label=point.label)
        points.append(point)
    return SweepPlan(sweep_id, axes, fixed, points)


def _free_sweep_id(store: JobStore | None) -> str:
    for _ in range(5):
        candidate = new_sweep_id()
        if store is None or store.get_sweep(candidate) is None:
            return candidate
    raise RuntimeError("could not find a free sweep id")


def _check_consistent(point: Point, first: Point | None, where: str) -> None:
    """Every point runs on one backend and reports to one MLflow experiment (its parent run's)."""
    if first is None:
        return
    a, b = first.prepared, point.prepared
    if a.backend.name != b.backend.name:
        raise UsageError(f"{where}: backend: every point of a sweep runs on one backend ({a.backend.name} for the first point, "
                         f"{b.backend.name} here); use --backend")
    ta, tb = a.request.spec.tracking, b.request.spec.tracking
    for key in ("enabled", "uri", "experiment"):
        if getattr(ta, key) != getattr(tb, key):
            raise UsageError(f"{where}: tracking.{key}: every point of a sweep reports to one MLflow experiment under one parent run; "
                             f"do not sweep tracking.*")


# -- dry-run ------------------------------------------------------------------------------------
def render_dry_run(sweep: SweepPlan) -> str:
    from .pipelines import render_followups
    from .plan import render_many
    from .submission import placeholders

    first = sweep.first
    backend = first.backend
    axes = "; ".join(f"{key} in [{', '.join(format_value(v) for v in values)}]" for key, values in sweep.axes)
    tracking = first.request.spec.tracking
    lines = [
        f"# sweep {sweep.sweep_id}: {first.resolved.name} ({first.resolved.source_display}), {len(sweep.points)} point(s) on the "
        f"{backend.name} backend",
        f"# grid: {axes}" + (f"; fixed: {' '.join(sweep.fixed)}" if sweep.fixed else ""),
    ]
    if tracking.enabled:
        lines.append(f"# MLflow: parent run {sweep.sweep_id!r} in experiment {tracking.experiment!r}; each point's run is its child")
    if first.resolved.uses_demo_data:
        lines.append(f"# the built-in demo dataset would be generated in {first.resolved.run.data.url} if absent")
    if any(p.followups for p in sweep.points):
        names = ", ".join(f.prepared.resolved.name for f in sweep.points[0].followups)
        lines.append(f"# pipeline: each point is followed by {names}, from its final checkpoint")
    text = "\n".join(lines) + "\n" + render_many(backend.plan_many([p.prepared.request for p in sweep.points]))
    text = placeholders(first.resolved).apply(text)
    for point in sweep.points:
        if point.followups:
            text += f"# === follow-ups of point {point.index + 1}: {point.label} ===\n" + render_followups(point.prepared, point.followups)
    return text


# -- launching ----------------------------------------------------------------------------------
def launch(sweep: SweepPlan, store: JobStore, say=print) -> tuple[SweepRecord, list[JobRecord], list[list[JobRecord]]]:
    """Parent run, sweep record, the points (one array), then each point's follow-ups."""
    first = sweep.first
    tracking = first.request.spec.tracking
    parent_run_id = None
    if tracking.enabled:
        parent_run_id = _start_parent_run(sweep, say)
    for point in sweep.points:
        point.prepared.request.spec.sweep.parent_run_id = parent_run_id
    from .redact import scrub_text

    record = SweepRecord(
        sweep_id=sweep.sweep_id, experiment=first.resolved.name, source=first.resolved.source_display, backend=first.backend.name,
        axes=[[key, values] for key, values in sweep.axes],
        points=[{"handle": p.prepared.request.handle, "values": p.values} for p in sweep.points],
        overrides=[scrub_text(o) for o in sweep.fixed],
        tracking_uri=scrub_text(tracking.uri) if tracking.enabled else None,
        tracking_experiment=tracking.experiment if tracking.enabled else None, parent_run_id=parent_run_id,
    )
    store.add_sweep(record)
    jobs = launch_array([p.prepared for p in sweep.points], store, say, sweep_id=sweep.sweep_id)
    followups = [launch_followups(job, point.prepared, point.followups, store, say, sweep_id=sweep.sweep_id) if point.followups else []
                 for point, job in zip(sweep.points, jobs)]
    return record, jobs, followups


def _start_parent_run(sweep: SweepPlan, say) -> str | None:
    """The MLflow run that groups the points'. A tracking server that cannot be reached does not
    stop the sweep (training never waits on tracking): the points then run without a parent."""
    first = sweep.first
    spec = first.request.spec
    try:
        from .tracking import start_sweep_run

        return start_sweep_run(spec.tracking.uri, spec.tracking.experiment, sweep.sweep_id,
                               [(key, values) for key, values in sweep.axes], fixed=sweep.fixed, source=first.resolved.source_display,
                               description=first.resolved.spec.description, submitted=dataclasses.asdict(spec.submitted),
                               backend=first.backend.name)
    except Exception as err:  # noqa: BLE001 — see above
        from .redact import scrub_text

        say(f"warning: could not create the sweep's MLflow parent run ({scrub_text(str(err))[:300]}); the points run without it")
        return None


def submit(target: str, arguments: list[str], *, backend: str | None = None, say=print):
    from .store import open_store

    store = open_store()
    sweep = plan(target, arguments, backend=backend, store=store)
    record, jobs, followups = launch(sweep, store, say)
    return sweep, record, jobs, followups


# -- reading a sweep back -----------------------------------------------------------------------
def find_sweep(store: JobStore, prefix: str) -> SweepRecord | None:
    """The sweep `prefix` names (a unique prefix will do), None if it names no sweep."""
    if not prefix.startswith(SWEEP_PREFIX):
        return None
    matches = store.find_sweeps(prefix)
    if len(matches) > 1:
        raise UsageError(f"{prefix!r} matches several sweeps: {', '.join(m.sweep_id for m in matches[:5])}")
    return matches[0] if matches else None


def close_parent_if_ended(record: SweepRecord, jobs: list[JobRecord], store: JobStore) -> SweepRecord:
    """Once every job of the sweep has ended, make sure the parent run is marked ended too (a point
    killed without closing its run never triggers the runner's own check)."""
    import time

    from .backends import JobState

    handles = {p["handle"] for p in record.points}
    points = [j for j in jobs if j.handle in handles]
    if record.closed_at or not record.parent_run_id or not points or not all(j.state.terminal for j in points):
        return record
    states = {j.state for j in points}
    status = "FAILED" if JobState.FAILED in states else "KILLED" if JobState.CANCELLED in states else "FINISHED"
    try:
        from .tracking import end_sweep_run

        end_sweep_run(_real_uri(record), record.parent_run_id, status)
    except Exception:  # noqa: BLE001 — tried again at the next status
        return record
    return store.update_sweep(record.sweep_id, closed_at=time.time())


def _real_uri(record: SweepRecord) -> str:
    """The stored URI has its password redacted: prefer the environment's when it is the same server."""
    import os

    from .redact import scrub_text

    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and scrub_text(env) == record.tracking_uri:
        return env
    return record.tracking_uri


__all__ = ["SWEEP_PREFIX", "Point", "SweepPlan", "find_sweep", "grid", "launch", "parse_arguments", "plan", "render_dry_run",
           "split_values", "submit"]
