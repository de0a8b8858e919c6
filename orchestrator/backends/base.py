"""The surface every backend implements: check, plan, launch, status, logs, cancel.

A backend receives a `LaunchRequest` — a validated experiment, its handle, the typed job spec
(orchestrator/jobspec.py) that `orchestrator.runner` reads on every rank, and the environment to
add — and never re-reads experiment files. `plan(request)` turns it into a `LaunchPlan`
(orchestrator/plan.py: files, environment, command / sbatch script / Ray job, the scheduler's
parameters) without writing or contacting anything; `--dry-run` renders that plan and `launch`
executes it. What it launches, on every rank, is the runner on the spec:

    python -m orchestrator.runner SPEC.yaml        (or orchestrator.runner.run_job(spec) in-process)

with the torch.distributed variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)
set by whatever starts the ranks: torchrun here, SLURM/submitit or Ray Train elsewhere.

Sweeps and pipelines (orchestrator/sweeps.py, pipelines.py) use two optional parts:
`plan_many`/`launch_many` (a sweep's points at once; a SLURM job array where the backend has
one) and `LaunchRequest.depends_on` (start only after other jobs completed OK: SLURM's afterok),
which a backend honours only if it sets `supports_dependencies`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from mae_core.exitcodes import ExitCode

from ..jobspec import SPEC_FILE, JobSpec
from ..plan import LaunchPlan
from ..redact import scrub_text
from .states import JobState


@dataclass
class LaunchRequest:
    handle: str
    experiment: object  # orchestrator.experiments.ResolvedExperiment
    spec: JobSpec  # what orchestrator.runner reads
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

    @property
    def label(self) -> str | None:
        return self.spec.sweep.label if self.spec.sweep else None


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


def exit_meaning(code: int) -> str:
    """What a job's exit status says, in words: ExitCode's meaning, or the signal that killed it
    (a negative Popen returncode, or 128 + N from a shell)."""
    if code < 0:
        code = 128 - code
    try:
        return ExitCode(code).meaning
    except ValueError:
        pass
    if 128 < code < 160:
        import signal

        try:
            return f"killed by {signal.Signals(code - 128).name}"
        except ValueError:
            pass
    return f"exit code {code}"


class Backend(ABC):
    name: ClassVar[str]
    # Whether `launch` honours LaunchRequest.depends_on (pipelines are refused otherwise).
    supports_dependencies: ClassVar[bool] = False

    def check(self, request: LaunchRequest) -> None:
        """Backend-specific consistency checks; raise ExperimentError naming the key."""

    @abstractmethod
    def plan(self, request: LaunchRequest) -> LaunchPlan:
        """Everything `launch` will do, as data; writes and contacts nothing."""

    @abstractmethod
    def launch(self, plan: LaunchPlan) -> Submitted:
        """Execute `plan` exactly: write its files, start its command / script / job."""

    @abstractmethod
    def status(self, record) -> Status:
        """The current state of a stored job (record: orchestrator.store.JobRecord). Reads only."""

    @abstractmethod
    def logs(self, record, follow: bool = False) -> Iterator[str]:
        """Lines of the job's output (rank 0 and the launcher); with follow, until the job ends."""

    @abstractmethod
    def cancel(self, record) -> None: ...

    def plan_many(self, requests: list[LaunchRequest]) -> list[LaunchPlan]:
        """A sweep's points, one plan each, in order (a scheduler with job arrays groups them)."""
        return [self.plan(request) for request in requests]

    def launch_many(self, plans: list[LaunchPlan]) -> list[Submitted]:
        """Launch several plans (a sweep's points), one Submitted per plan, in order.

        The default launches them one by one; a plan that fails does not stop the others and
        comes back as a FAILED Submitted whose info["error"] says why. A scheduler with job
        arrays overrides this to submit a group as one array."""
        results = []
        for plan in plans:
            try:
                results.append(self.launch(plan))
            except Exception as err:  # noqa: BLE001 — reported per point, the others still run
                results.append(failed_launch(err))
        return results


def failed_launch(err: BaseException) -> Submitted:
    return Submitted(native_id=None, log_path=None, info={"error": scrub_text(f"{type(err).__name__}: {err}")}, state=JobState.FAILED)


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
