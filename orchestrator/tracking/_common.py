"""What every part of the tracking package shares: constants, the client, small file helpers."""

from __future__ import annotations

import os
import sys
import threading

import fsspec

from ..redact import REDACTED, is_secret_name, scrub_text

# Usage telemetry would be network calls from every training job; opt in explicitly if wanted.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow's own defaults (7 retries with exponential backoff, 120 s a request) let one call take
# minutes while a server is down. Our sender retries by itself, forever, off the training loop;
# each call should fail fast so that a flush at the end keeps its deadline and a recovered
# server is noticed within seconds. A user's own settings win.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")

from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

RUN_ID_FILE = "mlflow_run_id"
MAX_PARAM_VALUE = 6000  # MLflow 3's limit on a param value's length
BATCH_LIMITS = {"metrics": 1000, "params": 100, "tags": 100}  # per log_batch call
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a run under its parent
CANCEL_TAG = "maectl.cancelled"  # set by `maectl cancel`: the run ends KILLED whatever its rank 0 says
# A follow-up's results that its pretraining run gets, as `<follow-up name>/<metric>`.
REPORTED_METRICS = ("eval/top1", "eval/top5", "eval/best_top1")
ENDED = ("FINISHED", "FAILED", "KILLED")


def client_for(uri: str) -> MlflowClient:
    if uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(uri.removeprefix("sqlite:///")) or ".", exist_ok=True)
    return MlflowClient(tracking_uri=uri)


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


def capped(tags: dict) -> dict[str, str]:
    return {k: scrub_text(str(v))[:MAX_PARAM_VALUE] for k, v in tags.items()}


def chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def read_text(url: str) -> str | None:
    try:
        with fsspec.open(url, "r") as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


def write_text_atomic(url: str, text: str) -> None:
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


def run_id_of(output_dir: str) -> str | None:
    """The run a job's output folder belongs to (<output_dir>/mlflow_run_id), None before it has one."""
    return read_text(f"{output_dir.rstrip('/')}/{RUN_ID_FILE}")


def experiment_id(client: MlflowClient, name: str) -> str:
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


def warn(message: str) -> None:
    print(f"[maectl] tracking: {scrub_text(message)}", file=sys.stderr, flush=True)


def as_dict(spec) -> dict:
    """A job spec as the plain tree this package reads (a JobSpec, or its dict already)."""
    return spec if isinstance(spec, dict) else spec.to_dict()


class TrackingTimeout(TimeoutError):
    """The tracking server did not answer within the caller's limit."""


def call_with_timeout(fn, timeout_s: float, what: str):
    """fn() on a daemon thread, waited for at most `timeout_s`: the CLI's reads must not hang while
    a server hangs (a stopped server accepts connections and never answers). The thread is left
    behind on timeout; being a daemon it does not hold the process's exit."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 — handed to the caller
            box["error"] = err

    thread = threading.Thread(target=target, name=f"maectl-tracking-{what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TrackingTimeout(f"{what}: the tracking server did not answer within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")
