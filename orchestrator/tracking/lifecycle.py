"""Where MLflow runs end, when their own job could not end them: the only writers besides the
task-side sink (run.py).

- `end_job_run(spec, status)`: a launcher whose ranks can be killed without closing their run
  (Ray Train tears a worker group down with SIGKILL; a SLURM task killed for memory) marks the run
  once the job as a whole has ended. `status_for_exit(code)` maps a runner exit code to a status.
- `cancel_job_run(spec)`: `maectl cancel` after the backend's cancel: the run ends KILLED, even if
  rank 0 saw its DataLoader workers die first and is closing it FAILED right now (the tag set here
  makes its close say KILLED too, whichever comes first).
- A sweep's parent run: created at submit time (`start_sweep_run`), ended by the last point to end
  (`close_sweep_run_if_done`, called from the points' sinks and from end/cancel here).

Every function here talks to the server within `timeout_s`: a command never hangs on a hung server.
"""

from __future__ import annotations

from mlflow.entities import Param, RunTag

from ..redact import scrub_text
from ._common import (
    BATCH_LIMITS,
    CANCEL_TAG,
    ENDED,
    MAX_PARAM_VALUE,
    PARENT_TAG,
    as_dict,
    call_with_timeout,
    capped,
    chunks,
    client_for,
    experiment_id,
    run_id_of,
)

WRITE_TIMEOUT_S = 20.0


def status_for_exit(code: int) -> str:
    """The MLflow status of a job that exited with the runner's `code` (mae_core.exitcodes.ExitCode)."""
    from mae_core.exitcodes import ExitCode

    if code == ExitCode.OK:
        return "FINISHED"
    if code in (ExitCode.PREEMPTED, ExitCode.INTERRUPTED, ExitCode.TERMINATED):
        return "KILLED"
    return "FAILED"


def _end(spec: dict, status: str, replace: tuple[str, ...], tag_cancel: bool) -> str | None:
    run_id = run_id_of(spec["resolved"]["output_dir"])
    if not run_id:
        return None
    client = client_for(spec["tracking"]["uri"])
    if tag_cancel:
        client.set_tag(run_id, CANCEL_TAG, "true")
    if client.get_run(run_id).info.status in replace:
        client.set_terminated(run_id, status=status)
    sweep = spec.get("sweep") or {}
    if sweep.get("parent_run_id"):
        close_sweep_run_if_done(client, sweep["parent_run_id"], int(sweep["points"]))
    return run_id


def end_job_run(spec, status: str, *, replace: tuple[str, ...] = ("RUNNING",), timeout_s: float = WRITE_TIMEOUT_S) -> str | None:
    """Mark the job's run (<output_dir>/mlflow_run_id) `status` if it is in one of `replace`
    (still RUNNING by default); then end its sweep's parent if this was the last point. Returns
    the run id, None if the job never got a run. Raises TrackingTimeout after `timeout_s`."""
    spec = as_dict(spec)
    if not spec.get("tracking", {}).get("enabled", True):
        return None
    return call_with_timeout(lambda: _end(spec, status, replace, False), timeout_s, "end the run")


def cancel_job_run(spec, *, timeout_s: float = WRITE_TIMEOUT_S) -> str | None:
    """`maectl cancel`: the run ends KILLED (from RUNNING, or from a FAILED that the kill caused)."""
    spec = as_dict(spec)
    if not spec.get("tracking", {}).get("enabled", True):
        return None
    return call_with_timeout(lambda: _end(spec, "KILLED", ("RUNNING", "FAILED"), True), timeout_s, "cancel the run")


# -- sweeps: the parent run ---------------------------------------------------------------------
def start_sweep_run(uri: str, experiment: str, sweep_id: str, axes: list[tuple[str, list]], *, fixed: list[str], source: str,
                    description: str, submitted: dict, backend: str, timeout_s: float = WRITE_TIMEOUT_S) -> str:
    """Create a sweep's parent run (RUNNING until its last point ends); returns its id. Its
    params are the axes (`sweep.model.mask_ratio = [0.5, 0.75, 0.9]`)."""
    def create() -> str:
        client = client_for(uri)
        exp_id = experiment_id(client, experiment)
        points = 1
        for _, values in axes:
            points *= len(values)
        tags = capped({
            "sweep_id": sweep_id, "maectl.kind": "sweep", "backend": backend, "experiment_file": source, "sweep_points": str(points),
            "overrides": " ".join(fixed) or "(none)", "user": submitted.get("user") or "unknown",
            "mlflow.user": submitted.get("user") or "unknown", "git_commit": submitted.get("git_commit") or "unknown",
            "mlflow.note.content": (description + "\n\n" if description else "") + f"maectl sweep {sweep_id}: {points} point(s)",
        })
        run = client.create_run(exp_id, run_name=sweep_id, tags=tags)
        params = [Param(f"sweep.{key}", scrub_text(str(list(values)))[:MAX_PARAM_VALUE]) for key, values in axes]
        for chunk in chunks(params, BATCH_LIMITS["params"]):
            client.log_batch(run.info.run_id, params=chunk, synchronous=True)
        return run.info.run_id

    return call_with_timeout(create, timeout_s, "create the sweep's parent run")


def close_sweep_run_if_done(client, parent_run_id: str, points: int) -> str | None:
    """Mark the parent run ended once all `points` child runs exist and have ended: FAILED if one
    failed, else KILLED if one was killed, else FINISHED. Every point calls this as it ends; two
    ending at once both set the same status. Returns the status set, if any."""
    parent = client.get_run(parent_run_id)
    if parent.info.status in ENDED:
        return None
    children = client.search_runs([parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                                  max_results=max(points, 1) * 2)
    if len(children) < points or any(c.info.status not in ENDED for c in children):
        return None
    statuses = {c.info.status for c in children}
    status = "FAILED" if "FAILED" in statuses else "KILLED" if "KILLED" in statuses else "FINISHED"
    client.set_terminated(parent_run_id, status=status)
    return status


def end_sweep_run(uri: str, parent_run_id: str, status: str, *, timeout_s: float = WRITE_TIMEOUT_S) -> None:
    """Mark the parent run `status` if it is still running (`maectl cancel SWEEP`)."""
    def end() -> None:
        client = client_for(uri)
        if client.get_run(parent_run_id).info.status not in ENDED:
            client.set_terminated(parent_run_id, status=status)

    call_with_timeout(end, timeout_s, "end the sweep's parent run")


def log_report(uri: str, run_id: str, files: dict[str, str], *, timeout_s: float = 60.0) -> None:
    """Upload `maectl report`'s files ({local path: artifact folder}) to a run (a sweep's parent)."""
    def upload() -> None:
        client = client_for(uri)
        for path, folder in files.items():
            client.log_artifact(run_id, path, folder)
        client.log_batch(run_id, tags=[RunTag("maectl.report", ", ".join(sorted(p.rsplit("/", 1)[-1] for p in files)))], synchronous=True)

    call_with_timeout(upload, timeout_s, "upload the report")
