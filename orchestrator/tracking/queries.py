"""Reading runs back, never writing: for `maectl status`, `list`, `logs` and `report`.

Each query answers within `timeout_s` or raises TrackingTimeout (a stopped server accepts
connections and never answers; these commands must not hang with it). Results are plain
dataclasses, so callers need no MLflow import.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._common import ENDED, PARENT_TAG, TrackingTimeout, call_with_timeout, client_for, run_id_of

READ_TIMEOUT_S = 3.0

__all__ = ["READ_TIMEOUT_S", "RunView", "TrackingTimeout", "job_run", "run_view", "runs_tagged", "sweep_runs"]


@dataclass(frozen=True)
class RunView:
    run_id: str
    name: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    experiment_id: str
    start_time: float | None  # seconds since the epoch
    end_time: float | None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # each metric's value at its highest step
    artifact_uri: str = ""

    @property
    def ended(self) -> bool:
        return self.status in ENDED


def _view(run) -> RunView:
    info, data = run.info, run.data
    return RunView(run_id=info.run_id, name=info.run_name or "", status=info.status, experiment_id=info.experiment_id,
                   start_time=info.start_time / 1000 if info.start_time else None, end_time=info.end_time / 1000 if info.end_time else None,
                   params=dict(data.params), tags=dict(data.tags), metrics=dict(data.metrics), artifact_uri=info.artifact_uri or "")


def run_view(uri: str, run_id: str, *, timeout_s: float = READ_TIMEOUT_S) -> RunView:
    return call_with_timeout(lambda: _view(client_for(uri).get_run(run_id)), timeout_s, "read the run")


def job_run(uri: str, output_dir: str, *, timeout_s: float = READ_TIMEOUT_S) -> RunView | None:
    """The run of the job writing to `output_dir`; None if it has none yet."""
    run_id = run_id_of(output_dir)
    return run_view(uri, run_id, timeout_s=timeout_s) if run_id else None


def _search(client, experiment: str | None, filter_string: str, limit: int = 1000) -> list[RunView]:
    if experiment is None:
        ids = [e.experiment_id for e in client.search_experiments()]
    else:
        found = client.get_experiment_by_name(experiment)
        ids = [found.experiment_id] if found is not None else []
    if not ids:
        return []
    return [_view(r) for r in client.search_runs(ids, filter_string=filter_string, max_results=limit)]


def runs_tagged(uri: str, experiment: str | None, key: str, values: list[str], *, timeout_s: float = 10.0) -> list[RunView]:
    """Runs of `experiment` (None: of every experiment) whose tag `key` is one of `values`
    (e.g. handle = local-3f9a2c)."""
    def search() -> list[RunView]:
        client = client_for(uri)
        # MLflow's filter has no OR and no IN for tags: one search per value.
        return [run for value in values for run in _search(client, experiment, f"tags.`{key}` = '{value.replace(chr(39), '')}'")]

    return call_with_timeout(search, timeout_s, "search runs")


@dataclass(frozen=True)
class SweepRuns:
    parent: RunView | None
    points: list[RunView]  # pretraining runs, one per point (the latest if a point ran twice)
    followups: list[RunView]  # pipeline follow-ups of the points (tag pipeline.after = a point's handle)


def sweep_runs(uri: str, experiment: str, sweep_id: str, *, timeout_s: float = 10.0) -> SweepRuns:
    """Every run of a sweep: its parent (tag maectl.kind = sweep), its points and their follow-ups
    (all tagged sweep_id)."""
    def search() -> SweepRuns:
        runs = _search(client_for(uri), experiment, f"tags.sweep_id = '{sweep_id}'")
        parents = [r for r in runs if r.tags.get("maectl.kind") == "sweep"]
        parent = parents[0] if parents else None
        followups = [r for r in runs if r.tags.get("pipeline.after")]
        points = [r for r in runs if r not in parents and r not in followups]
        if parent is not None:
            points = [r for r in points if r.tags.get(PARENT_TAG) in (parent.run_id, None)]
        return SweepRuns(parent, points, followups)

    return call_with_timeout(search, timeout_s, "read the sweep's runs")
