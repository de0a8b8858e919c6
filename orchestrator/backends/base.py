"""The surface every backend implements: check, dry_run, submit, status, logs, cancel.

A backend receives a `LaunchRequest` — a validated experiment, its handle, the job spec that
`orchestrator.runner` reads on every rank, and the environment to add — and never re-reads
experiment files. What it launches, on every rank, is the runner on the spec:

    python -m orchestrator.runner SPEC.yaml        (or orchestrator.runner.run_job(spec) in-process)

with the torch.distributed variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)
set by whatever starts the ranks: torchrun here, SLURM/submitit or Ray Train elsewhere.

Sweeps and pipelines (orchestrator/sweeps.py, pipelines.py) use two optional parts:
`submit_array` (a sweep's points at once; a SLURM job array where the backend has one) and
`LaunchRequest.depends_on` (start only after other jobs completed OK: SLURM's afterok), which a
backend honours only if it sets `supports_dependencies`.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import yaml

from ..redact import REDACTED, is_secret_name, scrub_text
from .states import JobState

SPEC_FORMAT = "maectl.job/1"
# A job that was never run because a job it depends on did not complete OK (its launcher's exit code).
EXIT_DEPENDENCY_FAILED = 6
SPEC_FILE = "job.yaml"
# Inherited variables that a job typically needs, shown (redacted) by dry-runs so that the
# user sees which credentials and endpoints the job will use.
PASSED_ENV_PREFIXES = ("AWS_", "MLFLOW_", "FSSPEC_", "S3_", "HF_", "CUDA_VISIBLE_DEVICES", "NCCL_")


@dataclass
class LaunchRequest:
    handle: str
    experiment: object  # orchestrator.experiments.ResolvedExperiment
    spec: dict  # what orchestrator.runner reads
    job_dir: Path  # maectl's folder for this job (spec, log, exit status)
    env: dict[str, str] = field(default_factory=dict)  # set on top of the submitting environment
    # Jobs (orchestrator.store.JobRecord: handle, native_id, info, job_dir) that must complete OK
    # before this one starts, like SLURM's afterok: a pipeline's follow-ups wait for their
    # pretraining. If one of them fails or is cancelled, this job never runs and ends CANCELLED.
    depends_on: list = field(default_factory=list)

    @property
    def resources(self):
        return self.experiment.spec.resources

    @property
    def spec_path(self) -> Path:
        return self.job_dir / SPEC_FILE


@dataclass
class Submitted:
    native_id: str | None  # pid, SLURM job id, Ray submission id
    log_path: str | None
    info: dict = field(default_factory=dict)  # whatever status/cancel need later
    state: JobState = JobState.PENDING


@dataclass
class Status:
    state: JobState
    exit_code: int | None = None
    message: str | None = None
    finished_at: float | None = None  # when the job ended, if the backend knows (else: when first seen ended)


class Backend(ABC):
    name: ClassVar[str]
    # Whether `submit` honours LaunchRequest.depends_on (pipelines are refused otherwise).
    supports_dependencies: ClassVar[bool] = False

    def check(self, request: LaunchRequest) -> None:
        """Backend-specific consistency checks; raise ExperimentError naming the key."""

    @abstractmethod
    def dry_run(self, request: LaunchRequest) -> str:
        """Exactly what submit would run, secrets redacted (placeholders applied by the caller)."""

    @abstractmethod
    def submit(self, request: LaunchRequest) -> Submitted: ...

    @abstractmethod
    def status(self, record) -> Status:
        """The current state of a stored job (record: orchestrator.store.JobRecord)."""

    @abstractmethod
    def logs(self, record, follow: bool = False) -> Iterator[str]:
        """Lines of the job's output (rank 0 and the launcher); with follow, until the job ends."""

    @abstractmethod
    def cancel(self, record) -> None: ...

    def submit_array(self, requests: list[LaunchRequest]) -> list[Submitted]:
        """Submit several jobs at once (a sweep's points), one Submitted per request, in order.

        The default submits them one by one; a request that fails does not stop the others and
        comes back as a FAILED Submitted whose info["error"] says why. A scheduler with job
        arrays overrides this to submit them as one array."""
        results = []
        for request in requests:
            try:
                results.append(self.submit(request))
            except Exception as err:  # noqa: BLE001 — reported per point, the others still run
                results.append(Submitted(native_id=None, log_path=None, info={"error": scrub_text(f"{type(err).__name__}: {err}")},
                                         state=JobState.FAILED))
        return results

    def dry_run_array(self, requests: list[LaunchRequest]) -> str:
        """What submit_array would run; by default each request's dry-run in turn."""
        parts = []
        for i, request in enumerate(requests):
            label = request.spec.get("sweep", {}).get("label") or request.handle
            parts.append(f"# === {i + 1}/{len(requests)}: {label} ===\n{self.dry_run(request)}")
        return "".join(parts)


# -- helpers shared by backends --------------------------------------------------------------
class Placeholders:
    """Replaces machine-specific strings (paths, the interpreter, the handle) with stable tokens,
    so that dry-run renderings are the same on every machine and can be pinned by golden files."""

    def __init__(self, mapping: dict[str, str]):
        # Longest first: a path must not be half-replaced by one of its own prefixes.
        self.mapping = sorted(((k, v) for k, v in mapping.items() if k), key=lambda kv: len(kv[0]), reverse=True)

    def apply(self, text: str) -> str:
        for real, token in self.mapping:
            text = text.replace(real, token)
        return text


def dump_spec(spec: dict) -> str:
    return yaml.safe_dump(spec, sort_keys=False, default_flow_style=False, width=120)


def write_spec(path: Path, spec: dict) -> None:
    """Owner-only: the spec may hold a tracking URI with a password in it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(dump_spec(spec))
    os.replace(tmp, path)


def passed_environment(extra: dict[str, str]) -> dict[str, str]:
    """The variables a dry-run shows: what maectl sets, then relevant inherited ones, redacted."""
    shown = {k: os.environ[k] for k in sorted(os.environ) if k.startswith(PASSED_ENV_PREFIXES)}
    shown.update(extra)
    return {k: (REDACTED if is_secret_name(k) else scrub_text(v)) for k, v in shown.items()}


def shell_quote(word: str) -> str:
    import shlex

    return shlex.quote(word) if word and not word.startswith("<") else (word or "''")


def follow_log(path: Path, follow: bool, active, wait_s: float = 0.5) -> Iterator[str]:
    """Lines of a job's log file, secrets scrubbed. With `follow`, keep reading while
    `active()` says the job may still write (pending, running, requeued); then one last read,
    since a job may write its final lines as it ends. Partial lines are held until complete."""
    while follow and not path.exists() and active():
        time.sleep(wait_s)  # queued: no log yet
    if not path.exists():
        return
    with open(path, errors="replace") as f:
        pending = ""
        while True:
            chunk = f.readline()
            if chunk:
                pending += chunk
                if pending.endswith("\n"):
                    yield scrub_text(pending)
                    pending = ""
                continue
            if not follow or not active():
                rest = pending + f.read()
                if rest:
                    yield scrub_text(rest if rest.endswith("\n") else rest + "\n")
                return
            time.sleep(0.25)
