"""A job's MLflow run, as the task side sees it: `open_run(spec, output_dir)` -> an MLflowSink,
the mae_core metric sink that the runner hands to the engine, closed by the runner with the job's
outcome.

Nothing here blocks the training loop: the run is created (or continued) on the sender's thread,
metrics and artifacts are handed to it, and only `close()` waits, for the flush at the end.
A run whose server is down when the job starts is created once the server answers.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import threading
import time

import fsspec
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from ..redact import scrub_text, scrub_tree
from . import artifacts
from ._common import (
    BATCH_LIMITS,
    CANCEL_TAG,
    PARENT_TAG,
    REPORTED_METRICS,
    RUN_ID_FILE,
    as_dict,
    capped,
    chunks,
    client_for,
    experiment_id,
    flatten_params,
    read_text,
    warn,
    write_text_atomic,
)
from .sender import Refused, Sender

# The flush at the end gives up after this long without the server taking anything
# (MAECTL_TRACKING_FLUSH_TIMEOUT_S); what is left stays in <output_dir>/metrics.jsonl.
FLUSH_TIMEOUT_S = float(os.environ.get("MAECTL_TRACKING_FLUSH_TIMEOUT_S", "120"))
OPEN_WAIT_S = 10.0  # how long open_run waits for the run to exist (so its id can be printed)


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
    task = spec.get("resolved", {}).get("task")
    if task:
        tags["maectl.task"] = task
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
    return capped(tags)


def _last_steps(client, run) -> dict[str, int]:
    """Highest step logged per metric. A run's "latest" metrics are those at their highest step,
    so these come with the run itself; fetching whole histories would be slow for long runs."""
    latest = getattr(run.data, "_metric_objs", None)
    if latest is not None:
        return {m.key: m.step for m in latest}
    return {key: max(m.step for m in client.get_metric_history(run.info.run_id, key)) for key in run.data.metrics}


class MLflowSink:
    """A mae_core MetricSink writing to one MLflow run through a background sender."""

    def __init__(self, spec: dict, output_dir: str, *, flush_timeout_s: float = FLUSH_TIMEOUT_S):
        self.spec, self.output_dir = spec, output_dir.rstrip("/")
        self.uri = spec["tracking"]["uri"]
        self.client = client_for(self.uri)
        self.flush_timeout_s = flush_timeout_s
        self._run_id: str | None = None
        self._opened = threading.Event()
        # A resumed job replays the steps between its checkpoint and the interruption; the run
        # already has them (the same values: resume is exact), so they are not sent twice.
        self.logged_until: dict[str, int] = {}
        self.report_to: tuple[str, str] | None = None  # (pretraining run id, follow-up name): pipelines
        self.sweep_parent: tuple[str, int] | None = None  # (parent run id, number of points): sweeps
        self.model_uri: str | None = None  # models:/NAME/VERSION once the encoder is registered
        self._final: dict[str, float] = {}
        self._monitor = None
        self._resumed = False
        self._closed = False
        self.sender = Sender(self._send_metrics, name=f"maectl-tracking-{spec['handle']}")
        self.sender.add_job("open the run", self._open)

    @property
    def run_id(self) -> str | None:
        """The run's id; None while the server has not answered yet."""
        return self._run_id

    def wait_open(self, timeout_s: float) -> str | None:
        self._opened.wait(timeout_s)
        return self._run_id

    # -- the training loop's side: no I/O ------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        stamp = int(time.time() * 1000)
        batch = []
        for key, value in metrics.items():
            value = float(value)
            if not math.isfinite(value):
                continue
            if key in REPORTED_METRICS:
                self._final[key] = value
            batch.append(Metric(key, value, stamp, int(step)))
        # An epoch's record comes just before the epoch-end checkpoint: sent at once, the
        # metrics up to that checkpoint are on the server before a kill can take them.
        self.sender.add_metrics(batch, now="epoch" in metrics)
        if "epoch" in metrics and self._monitor is not None and not self._monitor_alive():
            self.sender.add_job("restart the system-metrics monitor", self._restart_monitor)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        self.sender.add_job(f"upload {local_path}", lambda: self._upload(local_path, artifact_path))
        if artifact_path == artifacts.ENCODER_ARTIFACT_DIR:
            # The engine exports the final encoder last; as an MLflow model it is a registered version.
            final_dir = local_path.rsplit("/", 1)[0]
            self.sender.add_job("log the encoder as an MLflow model", lambda: self._log_model(final_dir))

    def log_text(self, text: str, artifact_file: str) -> None:
        self.sender.add_job(f"upload {artifact_file}", lambda: self.client.log_text(self._need_run(), text, artifact_file))

    def close(self, status: str = "FINISHED") -> bool:
        """Flush, then mark the run FINISHED, FAILED or KILLED (a restart sets it RUNNING again).
        Waits while the server takes what is left; True if everything arrived."""
        if self._closed:
            return True
        self._closed = True
        self.sender.add_job(f"end the run {status}", lambda: self._terminate(status))
        done = self.sender.drain(self.flush_timeout_s)
        self._stop_monitor()
        metrics, jobs = self.sender.pending()
        if not done or metrics or jobs:
            warn(f"gave up after {self.flush_timeout_s:g} s without an answer from {scrub_text(self.uri)}: {metrics} metric(s) "
                 f"and {jobs} upload(s)/update(s) not sent; the metrics are in {self.output_dir}/metrics.jsonl")
            return False
        if self.sender.dropped:
            warn(f"{self.sender.dropped} metric(s) were dropped while the server was unreachable (buffer bound)")
        return not self.sender.dropped and not self.sender.failed

    # -- the sender's thread -------------------------------------------------------------------
    def _need_run(self) -> str:
        if self._run_id is None:
            raise Refused("the run could not be created")
        return self._run_id

    def _send_metrics(self, batch: list[Metric]) -> None:
        fresh = [m for m in batch if m.step > self.logged_until.get(m.key, -1)]
        if fresh:
            self.client.log_batch(self._need_run(), metrics=fresh, synchronous=True)

    def _open(self) -> None:
        """Create this job's run, or continue the one named in <output_dir>/mlflow_run_id."""
        spec, client = self.spec, self.client
        tracking = spec["tracking"]
        exp_id = experiment_id(client, tracking["experiment"])
        id_file = f"{self.output_dir}/{RUN_ID_FILE}"
        # Training from scratch in an old output folder is a new run, not a continuation.
        fresh = spec["resolved"].get("checkpoint", {}).get("resume") == "never"
        run_id = None if fresh else read_text(id_file)
        run = None
        if run_id:
            try:
                run = client.get_run(run_id)
            except MlflowException as err:
                if err.get_http_status_code() >= 500:
                    raise
                warn(f"{id_file} names run {run_id}, which {scrub_text(self.uri)} does not have: starting a new run")
        params = flatten_params(scrub_tree(spec["resolved"]))
        tags = _tags(spec)
        pretrain_run_id = self._pretraining_run()
        if pretrain_run_id:
            tags.update({PARENT_TAG: pretrain_run_id, "pipeline.parent_run_id": pretrain_run_id})
        if run is None:
            run = client.create_run(exp_id, run_name=tracking.get("run_name") or spec["handle"], tags=tags)
            run_id = run.info.run_id
            write_text_atomic(id_file, run_id + "\n")
            new_params = params
        else:
            self._resumed = True
            client.update_run(run_id, status="RUNNING")
            old = run.data.params
            new_params = {k: v for k, v in params.items() if k not in old}
            changed = sorted(k for k, v in params.items() if k in old and old[k] != v)
            self.logged_until = _last_steps(client, run)
            self._backfill(run_id)
            tags = {**tags, "resumes": str(int(run.data.tags.get("resumes", "0")) + 1)}
            if changed:
                tags["params_changed_on_resume"] = ", ".join(changed)[:6000]
                warn(f"params are immutable in MLflow; the run keeps its first values for: {', '.join(changed)}")
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()][: BATCH_LIMITS["tags"]], synchronous=True)
        for chunk in chunks([Param(k, v) for k, v in new_params.items()], BATCH_LIMITS["params"]):
            client.log_batch(run_id, params=chunk, synchronous=True)
        self._run_id = run_id
        if pretrain_run_id:
            self.report_to = (pretrain_run_id, spec["pipeline"]["stage"])
        sweep = spec.get("sweep")
        if sweep and sweep.get("parent_run_id"):
            self.sweep_parent = (sweep["parent_run_id"], int(sweep["points"]))
        self._opened.set()
        self.sender.release()
        # Next, before any metric or upload: the config, the dataset, the system-metrics monitor.
        import yaml

        config = yaml.safe_dump(scrub_tree(spec["resolved"]), sort_keys=False)
        self.sender.add_job("the dataset inputs", self._log_inputs, first=True)
        self.sender.add_job("upload config/resolved.yaml", lambda: client.log_text(run_id, config, "config/resolved.yaml"), first=True)
        self._monitor = artifacts.start_system_metrics(self.uri, run_id, resume=self._resumed)

    def _backfill(self, run_id: str) -> None:
        """Metrics the previous attempt wrote to <output_dir>/metrics.jsonl but never got to the
        server (it was killed while the server was down): sent now, from the file, so the run
        has no gap. The resumed job then skips those steps as already logged (resume is exact:
        the values are the same)."""
        missing: dict[tuple[str, int], Metric] = {}
        try:
            with fsspec.open(f"{self.output_dir}/metrics.jsonl", "r") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # the line being written when the job was killed
                    step = record.get("step")
                    if step is None:
                        continue
                    for key, value in record.get("metrics", {}).items():
                        if isinstance(value, (int, float)) and math.isfinite(value) and step > self.logged_until.get(key, -1):
                            missing[(key, int(step))] = Metric(key, float(value), int(record.get("time", 0) * 1000), int(step))
        except FileNotFoundError:
            return
        if not missing:
            return
        for chunk in chunks(list(missing.values()), BATCH_LIMITS["metrics"]):
            self.client.log_batch(run_id, metrics=chunk, synchronous=True)
        for key, step in missing:
            self.logged_until[key] = max(step, self.logged_until.get(key, -1))
        warn(f"sent {len(missing)} metric(s) from {self.output_dir}/metrics.jsonl that the previous attempt did not get to the server")

    def _pretraining_run(self) -> str | None:
        """A follow-up's pretraining run, from the pretraining's output folder: it did not exist
        yet when the follow-up was submitted."""
        pipeline = self.spec.get("pipeline")
        if not pipeline or not pipeline.get("after_output_dir"):
            return None
        run_id = read_text(f"{pipeline['after_output_dir'].rstrip('/')}/{RUN_ID_FILE}")
        if not run_id:
            return None
        try:
            self.client.get_run(run_id)
        except MlflowException as err:
            if err.get_http_status_code() >= 500:
                raise
            warn(f"the pretraining run {run_id} is not on this tracking server: the results stay on this run only")
            return None
        return run_id

    def _log_inputs(self) -> None:
        data = self.spec["resolved"].get("data") or {}
        if not data.get("url"):
            return
        try:
            inputs = artifacts.dataset_inputs(data)
        except Exception as err:  # noqa: BLE001 — a manifest the engine will complain about itself
            warn(f"no dataset input recorded: {err}")
            return
        if inputs:
            self.client.log_inputs(self._need_run(), datasets=inputs)

    def _upload(self, local_path: str, artifact_path: str | None) -> None:
        run_id = self._need_run()
        if "://" in local_path and not local_path.startswith("file://"):
            with tempfile.TemporaryDirectory() as tmp:
                copy = os.path.join(tmp, local_path.rstrip("/").rsplit("/", 1)[-1])
                fsspec.core.url_to_fs(local_path)[0].get(local_path, copy)
                self.client.log_artifact(run_id, copy, artifact_path)
        else:
            self.client.log_artifact(run_id, local_path.removeprefix("file://"), artifact_path)

    def _log_model(self, final_dir: str) -> None:
        try:
            self.model_uri = artifacts.log_encoder_model(self.uri, self._need_run(), final_dir, self.spec["tracking"]["experiment"])
        except (MlflowException, OSError, ConnectionError):
            raise  # the server: retried
        except Exception as err:  # noqa: BLE001 — a model that cannot be built is not retried
            raise Refused(f"the encoder could not be logged as an MLflow model: {err}") from err

    def _monitor_alive(self) -> bool:
        # MLflow's monitor ends for good at the first failed call (an outage); ours starts it again.
        thread = getattr(self._monitor, "_process", None)
        return thread is not None and thread.is_alive()

    def _restart_monitor(self) -> None:
        if self._closed or self._monitor is None or self._monitor_alive():
            return
        self.client.get_run(self._need_run())  # the server answers again (else: retried)
        self._monitor = artifacts.start_system_metrics(self.uri, self._need_run(), resume=True)

    def _stop_monitor(self) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        # finish() joins the monitor's thread, which may sit in a call to a server that hangs.
        stopper = threading.Thread(target=monitor.finish, daemon=True)
        stopper.start()
        stopper.join(15)

    def _terminate(self, status: str) -> None:
        from .lifecycle import close_sweep_run_if_done

        run_id = self._need_run()
        if status == "FAILED" and self.client.get_run(run_id).data.tags.get(CANCEL_TAG):
            status = "KILLED"  # `maectl cancel` came first; rank 0 saw its loader workers die before SIGTERM
        self._stop_monitor()  # before the end: its last samples belong to the run
        self.client.set_terminated(run_id, status=status)
        if self.report_to and status == "FINISHED" and self._final:
            self._report_to_pretraining(*self.report_to)
        if self.sweep_parent:
            close_sweep_run_if_done(self.client, *self.sweep_parent)

    def _report_to_pretraining(self, pretrain_run_id: str, stage: str) -> None:
        """The follow-up's final accuracies on the pretraining's run: one row per pretraining
        (per sweep point) with its downstream results, comparable in the MLflow UI."""
        stamp = int(time.time() * 1000)
        metrics = [Metric(f"{stage}/{key}", value, stamp, 0) for key, value in sorted(self._final.items())]
        tags = [RunTag(f"pipeline.{stage}.run_id", self._need_run())]
        self.client.log_batch(pretrain_run_id, metrics=metrics, tags=tags, synchronous=True)


def open_run(spec, output_dir: str, *, wait_s: float = OPEN_WAIT_S) -> MLflowSink:
    """This job's run (new, or the one named in <output_dir>/mlflow_run_id), opened in the
    background. Waits up to `wait_s` for it so that its id can be printed; never longer."""
    sink = MLflowSink(as_dict(spec), output_dir)
    sink.wait_open(wait_s)
    return sink
