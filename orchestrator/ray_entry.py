"""The Ray Job entrypoint that `maectl submit --backend ray` submits:

    python -m orchestrator.ray_entry job.yaml --workers N [--gpus-per-worker 1] [--cpus-per-worker C]
        --storage-path PATH --max-failures K

It runs on the cluster (in the job's driver process) and starts a Ray Train `TorchTrainer`
whose loop calls `orchestrator.runner.run_job(spec)` on every worker. Ray Train sets up the
process group (gloo on CPU, NCCL on GPUs) and the RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*
variables; the engine sees an initialised process group and joins it as it is.

Checkpoints: the engine's own, in the job's output_dir (shared disk or s3://), are the only ones.
Ray Train's checkpointing is not used: the engine already writes atomic, exactly resumable
checkpoints, and reporting them to Ray as well would copy every checkpoint a second time into
Ray's storage. When a worker dies, `FailureConfig(max_failures)` makes Ray Train restart the
whole worker group; the loop runs again from the top, the engine finds the latest checkpoint
in output_dir and resumes there, and rank 0 continues the same MLflow run (its id is kept in
<output_dir>/mlflow_run_id). Ray's storage (RunConfig.storage_path/name) holds only Ray
Train's own run state.

Light at import time (standard library, the job spec, the exit codes): ray and torch are
imported inside `main`, so that `--help` and the backend's tests do not pay for them.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys

from mae_core.exitcodes import ExitCode, describe

from .jobspec import JobSpec


class WorkerFailed(RuntimeError):
    """A rank's run_job ended with a non-zero exit code: Ray Train counts it as a failure
    (and restarts the group while max_failures allows)."""


def _say(message: str) -> None:
    from .redact import scrub_text

    print(f"[maectl] {scrub_text(message)}", flush=True)


def train_loop_per_worker(config: dict) -> None:
    """One rank of the job: the same runner every backend launches."""
    from .runner import run_job

    rank = int(os.environ.get("RANK", "0"))
    # Which process is which rank, in the job log: what an operator (or the kill test) needs
    # to find one worker among the Ray processes.
    print(f"[maectl] ray worker rank {rank}/{os.environ.get('WORLD_SIZE', '1')}: pid {os.getpid()} on {socket.gethostname()}", flush=True)
    code = run_job(config["spec"])
    if code != ExitCode.OK:
        raise WorkerFailed(f"rank {rank}: the runner exited with {describe(int(code))}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.ray_entry", description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="job spec (job.yaml in the job's working_dir, or any fsspec URL)")
    parser.add_argument("--workers", type=int, required=True, help="Ray Train workers = ranks")
    parser.add_argument("--gpus-per-worker", type=int, default=0)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--storage-path", required=True, help="RunConfig.storage_path: shared disk or s3://")
    parser.add_argument("--max-failures", type=int, default=3, help="worker-group restarts (-1: unlimited)")
    return parser.parse_args(argv)


def _end_tracking(spec: JobSpec, status: str) -> None:
    """A rank that Ray killed never closes its MLflow run: mark it from here, once the job
    has given up or been stopped, so that it does not stay RUNNING forever."""
    if not spec.tracking.enabled:
        return
    try:
        from .tracking import end_job_run

        end_job_run(spec.to_dict(), status)
    except Exception as err:  # noqa: BLE001 — the job's own outcome matters more than this
        _say(f"could not mark the MLflow run {status}: {err}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    spec = JobSpec.load(args.spec)
    if spec.tracking.enabled:
        from . import tracking  # noqa: F401 — now, so that a stop has no slow import to wait for

    import ray

    ray.init()  # the job's cluster (Ray Jobs set its address for the entrypoint)

    def on_sigterm(_signum, _frame):
        # All of the stop happens here, not by unwinding an exception: raised inside Ray
        # Train's blocking wait, one never reached this code before Ray's SIGKILL (3 s later).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _say("stopped (ray job stop / maectl cancel): the run can be continued from its last checkpoint")
        _end_tracking(spec, "KILLED")
        sys.stdout.flush()
        os._exit(ExitCode.TERMINATED)  # the driver's end takes its Train controller and workers with it

    # After ray.init, which installs a SIGTERM handler of its own.
    signal.signal(signal.SIGTERM, on_sigterm)
    return _fit(spec, args)


def _fit(spec: JobSpec, args: argparse.Namespace) -> int:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = args.gpus_per_worker > 0
    resources = {"CPU": args.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = args.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec.to_dict()},  # plain data through Ray's pickling; run_job types it again
        scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=spec.handle,
            storage_path=args.storage_path,
            failure_config=FailureConfig(max_failures=args.max_failures),
        ),
    )
    _say(f"job {spec.handle}: TorchTrainer, {args.workers} worker(s) x {resources}, "
         f"max_failures {args.max_failures}, Ray storage {args.storage_path}/{spec.handle}")
    try:
        trainer.fit()
    except Exception as err:  # noqa: BLE001 — Ray Train's TrainingFailedError and what it wraps
        _say(f"failed after the allowed restarts (max_failures {args.max_failures}): {err}")
        _end_tracking(spec, "FAILED")
        return ExitCode.FAILED
    _say("ray train run finished")
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
