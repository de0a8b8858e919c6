"""The per-rank entry point that every backend launches:

    python -m orchestrator.runner SPEC.yaml         (one rank; torchrun/SLURM/Ray start more)

It reads the job spec written at submit time, builds the engine's RunConfig, and on rank 0 the
metric sinks (MLflow + <output_dir>/metrics.jsonl); then calls mae_core.engine.train. Ranks come
from the torch.distributed environment, which the launcher sets.

Exit codes: mae_core.exitcodes.ExitCode (OK, FAILED, BAD_INPUT for a bad config or input,
PREEMPTED after a checkpoint on request, NON_FINITE_LOSS, TERMINATED by SIGTERM, e.g. `maectl cancel`).
"""

from __future__ import annotations

import dataclasses
import signal
import sys

from mae_core.exitcodes import ExitCode

from .jobspec import JobSpec, JobSpecError
from .redact import scrub_text


class JobTerminated(BaseException):
    """SIGTERM arrived. A BaseException so that no `except Exception` in a library swallows it."""


def _on_sigterm(signum, _frame):
    # Only once: a second SIGTERM (the group kill and a forwarded one) must not interrupt the
    # cleanup that the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise JobTerminated()


def _say(message: str) -> None:
    print(f"[maectl] {scrub_text(message)}", flush=True)


def load_spec(path: str) -> JobSpec:
    return JobSpec.load(path)


def run_job(job: JobSpec | dict, stop=None, *, sink=None, on_checkpoint=None) -> int:
    """Run one rank of the job described by `job`; returns the process exit code (an ExitCode).

    `stop` (a mae_core StopFlag): a launcher that learns of a coming preemption (SLURM's warning
    signal) sets it; the engine then checkpoints at the next step and the job exits with 3.
    `sink` (rank 0: one more metric sink) and `on_checkpoint(url, step)` (every rank, after each
    checkpoint): a launcher's own reporting (Ray Train's report, orchestrator/ray_entry.py)."""
    from mae_core.data import DataError
    from mae_core.engine import JsonlSink, NonFiniteLoss, Preempted, RunConfig, load_run_config, train
    from mae_core.engine.checkpointing import CheckpointError
    from mae_core.engine.distributed import env_from_environ
    from mae_core.structured import ConfigError

    env = env_from_environ()
    try:
        job = JobSpec.coerce(job)
        cfg = load_run_config(job.run_sections(f.name for f in dataclasses.fields(RunConfig)))
    except (ConfigError, JobSpecError) as err:
        print(f"error: job spec: {err}", file=sys.stderr, flush=True)
        return ExitCode.BAD_INPUT
    spec = job.to_dict()  # the plain tree, as orchestrator/tracking.py reads it

    jsonl = tracker = None
    if env.is_main:
        import fsspec

        fs, path = fsspec.core.url_to_fs(cfg.output_dir)
        fs.makedirs(path, exist_ok=True)
        _say(f"job {job.handle}: {job.experiment} ({job.source}), {env.world_size} rank(s), output {cfg.output_dir}")
        jsonl = JsonlSink(f"{cfg.output_dir.rstrip('/')}/metrics.jsonl")
        if spec["tracking"]["enabled"]:
            from .tracking import open_run

            tracker = open_run(spec, cfg.output_dir)
            run = tracker.run_id or "(pending: the server does not answer yet; training goes on, metrics wait)"
            _say(f"MLflow: experiment {spec['tracking']['experiment']!r}, run {run} at {spec['tracking']['uri']}")
    sinks = [s for s in (tracker, jsonl, sink if env.is_main else None) if s is not None]
    fanout = _Fanout(sinks) if sinks else None

    outcome, code = "FAILED", ExitCode.FAILED
    try:
        summary = train(cfg, fanout, env, stop, on_checkpoint)
        outcome, code = "FINISHED", ExitCode.OK
        if env.is_main:
            _say(f"done: {summary.epochs_completed} epochs, {summary.final_step} steps; last checkpoint {summary.last_checkpoint}")
        if env.distributed:  # each rank's own view of the result (the logged losses are all-reduced: the ranks agree)
            loss = summary.metrics.get("epoch/loss")
            _say(f"rank {env.rank} of {env.world_size}: {summary.final_step} steps" + (f", epoch/loss {loss!r}" if loss is not None else ""))
    except Preempted as err:
        outcome, code = "KILLED", ExitCode.PREEMPTED
        _say(f"stopped: {err}")
    except NonFiniteLoss as err:
        code = ExitCode.NON_FINITE_LOSS
        print(f"error: {err}", file=sys.stderr, flush=True)
    except (ConfigError, CheckpointError, DataError, ValueError, FileNotFoundError) as err:
        code = ExitCode.BAD_INPUT
        print(f"error: {scrub_text(str(err))}", file=sys.stderr, flush=True)
    except JobTerminated:
        outcome, code = "KILLED", ExitCode.TERMINATED
        if env.is_main:
            _say("terminated (SIGTERM): the run can be continued from its last checkpoint")
    finally:
        if jsonl is not None:
            jsonl.close()
        if tracker is not None:
            tracker.close(outcome)
    return code


class _Fanout:
    """MultiSink without close(): the runner closes each sink itself, the tracker with an outcome."""

    def __init__(self, sinks):
        self.sinks = sinks

    def log_metrics(self, metrics, step):
        for s in self.sinks:
            s.log_metrics(metrics, step)

    def log_artifact(self, local_path, artifact_path=None):
        for s in self.sinks:
            s.log_artifact(local_path, artifact_path)

    def close(self):
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m orchestrator.runner SPEC.yaml", file=sys.stderr)
        return ExitCode.BAD_INPUT
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        spec = load_spec(argv[0])
    except (OSError, JobSpecError) as err:
        print(f"error: {argv[0]}: {err}", file=sys.stderr, flush=True)
        return ExitCode.BAD_INPUT
    try:
        return int(run_job(spec))
    except JobTerminated:
        return ExitCode.TERMINATED


if __name__ == "__main__":
    sys.exit(main())
