"""MLflow, and the only module of maectl that imports it. Used on rank 0 only.

One MLflow experiment per experiment file, one run per submitted job. The run's id is kept in
`<output_dir>/mlflow_run_id`, beside the checkpoints: a job that starts again on the same
output folder (a requeue, a restart, a crash) resumes the checkpoint and continues the same run,
its metrics continuing from the resumed step. Params are immutable in MLflow, so a restart logs
only params the run does not have yet and reports changed ones in a tag.

Metrics are buffered and sent with `log_batch` (one `log_metric` call costs ~25 ms against a
server; a batch of 1000 costs ~125 ms). A tracking server that is down never stops training:
the buffer is kept and sent at the next flush.

Sweeps and pipelines (orchestrator/sweeps.py, pipelines.py) nest runs with MLflow's own
`mlflow.parentRunId` tag: a sweep's points under the sweep's parent run, which the last point
to end marks ended; a pipeline's follow-ups under the pretraining's run, to which a follow-up
that finishes copies its final accuracies (`<follow-up>/eval/top1`, ...).
"""

from __future__ import annotations

import math
import os
import socket
import sys
import tempfile
import time

import fsspec

# Usage telemetry would be network calls from every training job; opt in explicitly if wanted.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from .redact import REDACTED, is_secret_name, scrub_text, scrub_tree

RUN_ID_FILE = "mlflow_run_id"
MAX_PARAM_VALUE = 6000  # MLflow 3's limit on a param value's length
_BATCH_LIMITS = {"metrics": 1000, "params": 100, "tags": 100}  # per log_batch call
_MAX_BUFFERED = 200_000  # metrics kept while the server is unreachable; older ones are dropped
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a run under its parent
# A follow-up's results that its pretraining run gets, as `<follow-up name>/<metric>`.
REPORTED_METRICS = ("eval/top1", "eval/top5", "eval/best_top1")
_ENDED = ("FINISHED", "FAILED", "KILLED")


def flatten_params(tree: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"optim.betas": "[0.9, 0.95]", ...}, secrets redacted, values capped."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if is_secret_name(str(key)) and value is not None:
            out[name] = REDACTED
        elif isinstance(value, dict) and value:
            out.update(flatten_params(value, f"{name}."))
        else:
            text = scrub_text(str(value) if not isinstance(value, (list, tuple)) else str(list(value)))
            out[name] = text[:MAX_PARAM_VALUE]
    return out


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _read_text(url: str) -> str | None:
    try:
        with fsspec.open(url, "r") as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


def _write_text_atomic(url: str, text: str) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    if "://" in url and not url.startswith("file://"):
        with fsspec.open(url, "w") as f:  # an object PUT is atomic
            f.write(text)
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _experiment_id(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:
        # Another job created it between our lookup and create.
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _warn(message: str) -> None:
    print(f"[maectl] tracking: {scrub_text(message)}", file=sys.stderr, flush=True)


class MLflowSink:
    """A mae_core MetricSink writing to one MLflow run."""

    def __init__(self, client: MlflowClient, run_id: str, *, flush_every_s: float = 5.0, flush_at: int = 500,
                 logged_until: dict[str, int] | None = None):
        self.client, self.run_id = client, run_id
        self.flush_every_s, self.flush_at = flush_every_s, flush_at
        # A resumed job replays the steps between its checkpoint and the interruption; the run
        # already has them (the same values: resume is exact), so they are not sent twice.
        self.logged_until = dict(logged_until or {})
        self._buffer: list[Metric] = []
        self._last_flush = time.monotonic()
        self._closed = False
        self.report_to: tuple[str, str] | None = None  # (pretraining run id, follow-up name): pipelines
        self.sweep_parent: tuple[str, int] | None = None  # (parent run id, number of points): sweeps
        self._final: dict[str, float] = {}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        stamp = int(time.time() * 1000)
        for key, value in metrics.items():
            value = float(value)
            if key in REPORTED_METRICS and math.isfinite(value):
                self._final[key] = value
            if math.isfinite(value) and step > self.logged_until.get(key, -1):
                self._buffer.append(Metric(key, value, stamp, int(step)))
        # An epoch's record ("epoch" key) comes just before the epoch-end checkpoint: sent now,
        # the metrics up to that checkpoint survive a kill (a resumed run re-logs only later steps).
        if "epoch" in metrics or len(self._buffer) >= self.flush_at or time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        while self._buffer:
            batch = self._buffer[: _BATCH_LIMITS["metrics"]]
            try:
                self.client.log_batch(self.run_id, metrics=batch, synchronous=True)
            except Exception as err:  # noqa: BLE001 — tracking trouble must never stop training
                _warn(f"could not send {len(self._buffer)} metrics, will retry: {err}")
                del self._buffer[: max(0, len(self._buffer) - _MAX_BUFFERED)]
                return
            del self._buffer[: len(batch)]

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        self.flush()
        try:
            if "://" in local_path and not local_path.startswith("file://"):
                with tempfile.TemporaryDirectory() as tmp:
                    copy = os.path.join(tmp, local_path.rstrip("/").rsplit("/", 1)[-1])
                    fsspec.core.url_to_fs(local_path)[0].get(local_path, copy)
                    self.client.log_artifact(self.run_id, copy, artifact_path)
            else:
                self.client.log_artifact(self.run_id, local_path.removeprefix("file://"), artifact_path)
        except Exception as err:  # noqa: BLE001
            _warn(f"could not upload {local_path}: {err}")

    def log_text(self, text: str, artifact_file: str) -> None:
        try:
            self.client.log_text(self.run_id, text, artifact_file)
        except Exception as err:  # noqa: BLE001
            _warn(f"could not upload {artifact_file}: {err}")

    def close(self, status: str = "FINISHED") -> None:
        """Flush, then mark the run FINISHED, FAILED or KILLED (a restart sets it RUNNING again)."""
        if self._closed:
            return
        self._closed = True
        self.flush()
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as err:  # noqa: BLE001
            _warn(f"could not mark the run {status}: {err}")
        if self.report_to and status == "FINISHED" and self._final:
            self._report_to_pretraining(*self.report_to)
        if self.sweep_parent:
            try:
                close_sweep_run_if_done(self.client, *self.sweep_parent)
            except Exception as err:  # noqa: BLE001 — `maectl status SWEEP` closes it later
                _warn(f"could not check the sweep's parent run: {err}")

    def _report_to_pretraining(self, pretrain_run_id: str, stage: str) -> None:
        """The follow-up's final accuracies on the pretraining's run: one row per pretraining
        (per sweep point) with its downstream results, comparable in the MLflow UI."""
        stamp = int(time.time() * 1000)
        metrics = [Metric(f"{stage}/{key}", value, stamp, 0) for key, value in sorted(self._final.items())]
        tags = [RunTag(f"pipeline.{stage}.run_id", self.run_id)]
        try:
            self.client.log_batch(pretrain_run_id, metrics=metrics, tags=tags, synchronous=True)
        except Exception as err:  # noqa: BLE001 — the follow-up's own run has the values
            _warn(f"could not log {', '.join(m.key for m in metrics)} on the pretraining run {pretrain_run_id}: {err}")


def _tags(spec: dict) -> dict[str, str]:
    submitted = spec.get("submitted", {})
    tags = {
        "backend": spec["backend"],
        "handle": spec["handle"],
        "experiment_file": spec.get("source", ""),
        "git_commit": submitted.get("git_commit") or "unknown",
        "git_dirty": str(bool(submitted.get("git_dirty"))).lower(),
        "host": socket.gethostname(),
        "user": submitted.get("user") or "unknown",
        "overrides": " ".join(spec.get("overrides", [])) or "(none)",
        "mlflow.user": submitted.get("user") or "unknown",
        "mlflow.source.name": spec.get("source", ""),
        "mlflow.source.type": "JOB",
    }
    if submitted.get("git_commit"):
        tags["mlflow.source.git.commit"] = submitted["git_commit"]
    description = spec.get("resolved", {}).get("description")
    if description:
        tags["mlflow.note.content"] = description
    sweep = spec.get("sweep")
    if sweep:
        tags.update({"sweep_id": sweep["id"], "sweep_point": sweep.get("label", ""), "sweep_index": str(sweep.get("index", ""))})
        if sweep.get("parent_run_id"):
            tags[PARENT_TAG] = sweep["parent_run_id"]
    pipeline = spec.get("pipeline")
    if pipeline:
        tags.update({"pipeline.after": pipeline["after"], "pipeline.stage": pipeline["stage"]})
        if pipeline.get("sweep_id"):
            tags["sweep_id"] = pipeline["sweep_id"]
    return {k: scrub_text(str(v))[:MAX_PARAM_VALUE] for k, v in tags.items()}


def _pretraining_run(client: MlflowClient, spec: dict) -> str | None:
    """A follow-up's pretraining run, from the pretraining's output folder: it did not exist yet
    when the follow-up was submitted."""
    pipeline = spec.get("pipeline")
    if not pipeline or not pipeline.get("after_output_dir"):
        return None
    run_id = _read_text(f"{pipeline['after_output_dir'].rstrip('/')}/{RUN_ID_FILE}")
    if not run_id:
        return None
    try:
        client.get_run(run_id)
    except MlflowException:
        _warn(f"the pretraining run {run_id} is not on this tracking server: the results stay on this run only")
        return None
    return run_id


def _last_steps(client: MlflowClient, run) -> dict[str, int]:
    """Highest step logged per metric. A run's "latest" metrics are those at their highest step,
    so these come with the run itself; fetching whole histories would be slow for long runs."""
    latest = getattr(run.data, "_metric_objs", None)
    if latest is not None:
        return {m.key: m.step for m in latest}
    return {key: max(m.step for m in client.get_metric_history(run.info.run_id, key)) for key in run.data.metrics}


def open_run(spec: dict, output_dir: str) -> MLflowSink:
    """Create this job's run, or continue the one named in <output_dir>/mlflow_run_id."""
    tracking = spec["tracking"]
    uri = tracking["uri"]
    if uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(uri.removeprefix("sqlite:///")) or ".", exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = _experiment_id(client, tracking["experiment"])
    id_file = f"{output_dir.rstrip('/')}/{RUN_ID_FILE}"
    # Training from scratch in an old output folder is a new run, not a continuation.
    fresh = spec["resolved"].get("checkpoint", {}).get("resume") == "never"
    run_id = None if fresh else _read_text(id_file)
    run = None
    logged_until: dict[str, int] = {}
    if run_id:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            _warn(f"{id_file} names run {run_id}, which {scrub_text(uri)} does not have: starting a new run")
            run = None
    params = flatten_params(scrub_tree(spec["resolved"]))
    tags = _tags(spec)
    pretrain_run_id = _pretraining_run(client, spec)
    if pretrain_run_id:
        tags.update({PARENT_TAG: pretrain_run_id, "pipeline.parent_run_id": pretrain_run_id})
    if run is None:
        run = client.create_run(experiment_id, run_name=tracking.get("run_name") or spec["handle"], tags=tags)
        run_id = run.info.run_id
        _write_text_atomic(id_file, run_id + "\n")
        new_params, changed = params, {}
    else:
        client.update_run(run_id, status="RUNNING")
        old = run.data.params
        new_params = {k: v for k, v in params.items() if k not in old}
        changed = {k: v for k, v in params.items() if k in old and old[k] != v}
        logged_until = _last_steps(client, run)
        resumes = int(run.data.tags.get("resumes", "0")) + 1
        tags = {**tags, "resumes": str(resumes)}
        if changed:
            tags["params_changed_on_resume"] = ", ".join(sorted(changed))[:MAX_PARAM_VALUE]
            _warn(f"params are immutable in MLflow; the run keeps its first values for: {', '.join(sorted(changed))}")
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()][: _BATCH_LIMITS["tags"]], synchronous=True)
    for chunk in _chunks([Param(k, v) for k, v in new_params.items()], _BATCH_LIMITS["params"]):
        client.log_batch(run_id, params=chunk, synchronous=True)
    sink = MLflowSink(client, run_id, logged_until=logged_until)
    if pretrain_run_id:
        sink.report_to = (pretrain_run_id, spec["pipeline"]["stage"])
    sweep = spec.get("sweep")
    if sweep and sweep.get("parent_run_id"):
        sink.sweep_parent = (sweep["parent_run_id"], int(sweep["points"]))
    import yaml

    sink.log_text(yaml.safe_dump(scrub_tree(spec["resolved"]), sort_keys=False), "config/resolved.yaml")
    return sink



def end_run_if_running(spec: dict, output_dir: str, status: str, replace: tuple[str, ...] = ("RUNNING",)) -> str | None:
    """Mark this job's run (from <output_dir>/mlflow_run_id) `status` if it is still RUNNING
    (or in another of the `replace` statuses).

    For launchers whose ranks can be killed without closing their run (Ray Train tears a worker
    group down with SIGKILL): called once the job as a whole has failed or been stopped. A SLURM
    cancel kills a task's DataLoader workers first, so rank 0 may have closed the run FAILED just
    before: `replace=("RUNNING", "FAILED")` makes it KILLED."""
    run_id = _read_text(f"{output_dir.rstrip('/')}/{RUN_ID_FILE}")
    if not run_id:
        return None
    client = MlflowClient(tracking_uri=spec["tracking"]["uri"])
    if client.get_run(run_id).info.status in replace:
        client.set_terminated(run_id, status=status)
    return run_id


# -- sweeps: the parent run ---------------------------------------------------------------------
def start_sweep_run(uri: str, experiment: str, sweep_id: str, axes: list[tuple[str, list]], *, fixed: list[str], source: str,
                    description: str, submitted: dict, backend: str) -> str:
    """Create a sweep's parent run (RUNNING until its last point ends); returns its id. Its
    params are the axes (`sweep.model.mask_ratio = [0.5, 0.75, 0.9]`)."""
    if uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(uri.removeprefix("sqlite:///")) or ".", exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = _experiment_id(client, experiment)
    points = 1
    for _, values in axes:
        points *= len(values)
    tags = {
        "sweep_id": sweep_id, "maectl.kind": "sweep", "backend": backend, "experiment_file": source, "sweep_points": str(points),
        "overrides": " ".join(fixed) or "(none)", "user": submitted.get("user") or "unknown",
        "mlflow.user": submitted.get("user") or "unknown", "git_commit": submitted.get("git_commit") or "unknown",
        "mlflow.note.content": (description + "\n\n" if description else "") + f"maectl sweep {sweep_id}: {points} point(s)",
    }
    tags = {k: scrub_text(str(v))[:MAX_PARAM_VALUE] for k, v in tags.items()}
    run = client.create_run(experiment_id, run_name=sweep_id, tags=tags)
    params = [Param(f"sweep.{key}", scrub_text(str(list(values)))[:MAX_PARAM_VALUE]) for key, values in axes]
    for chunk in _chunks(params, _BATCH_LIMITS["params"]):
        client.log_batch(run.info.run_id, params=chunk, synchronous=True)
    return run.info.run_id


def close_sweep_run_if_done(client: MlflowClient, parent_run_id: str, points: int) -> str | None:
    """Mark the parent run ended once all `points` child runs exist and have ended: FAILED if one
    failed, else KILLED if one was killed, else FINISHED. Every point calls this as it ends; two
    ending at once both set the same status. Returns the status set, if any."""
    parent = client.get_run(parent_run_id)
    if parent.info.status in _ENDED:
        return None
    children = client.search_runs([parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                                  max_results=max(points, 1) * 2)
    if len(children) < points or any(c.info.status not in _ENDED for c in children):
        return None
    statuses = {c.info.status for c in children}
    status = "FAILED" if "FAILED" in statuses else "KILLED" if "KILLED" in statuses else "FINISHED"
    client.set_terminated(parent_run_id, status=status)
    return status


def end_sweep_run(uri: str, parent_run_id: str, status: str) -> None:
    """Mark the parent run `status` if it is still running (`maectl status SWEEP`, once every
    point's job has ended, whatever became of their runs)."""
    client = MlflowClient(tracking_uri=uri)
    if client.get_run(parent_run_id).info.status not in _ENDED:
        client.set_terminated(parent_run_id, status=status)
