"""The Ray Job entrypoint that `maectl submit --backend ray` submits:

    python -m orchestrator.ray_entry job.yaml --workers N [--gpus-per-worker 1] [--cpus-per-worker C]
        --storage-path PATH --max-failures K [--placement-strategy SPREAD] [--code ship|installed]

It runs on the cluster (in the job's driver process) and starts a Ray Train `TorchTrainer`
whose loop calls `orchestrator.runner.run_job(spec)` on every worker. Ray Train sets up the
process group (gloo on CPU, NCCL on GPUs) and the RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*
variables; the engine sees an initialised process group and joins it as it is.

The code: with `--code ship` the job's runtime env carries this checkout's `orchestrator` and
`mae_core` (py_modules), so a worker on a node that has no copy of the checkout runs the
submitter's code; with `--code installed` (site key cluster_has_maectl) the cluster's own install
runs. Either way the driver and every worker compare a digest of the code they imported with the
submitter's (MAECTL_CODE_DIGEST) and stop with exit 2 if they differ.

Checkpoints: the engine writes its own (atomic, exactly resumable) into output_dir, which for a
job on several nodes is on S3 or a shared disk (checked at submission). After each one, every
rank calls `ray.train.report`: rank 0 with its latest metrics and a pointer checkpoint (a small
folder with maectl_checkpoint.json naming the engine's file and step), which Ray uploads to
RunConfig(storage_path)/<handle>/checkpoint-<step>. The pointer, not a copy, because a ViT-H
checkpoint is gigabytes and is already on shared storage; it is the pattern Ray's own docs give for
checkpoints written elsewhere. A restarted worker group asks `ray.train.get_checkpoint()` and
resumes from the file it names (or from a newer one in output_dir, if a rank died between the
save and the report).

Restarts: this driver, not Ray's FailureConfig, decides. Each attempt is one `fit()` with
max_failures 0 under the same run name and storage; a failed attempt whose ranks ended with a
code that no retry can fix (bad config or data, an import error, a non-finite loss: ExitCode
.retryable) ends the job at once with that code; any other failure (a killed worker, a lost
node) starts the next attempt, up to --max-failures, after which the job ends with
TOO_MANY_RESTARTS. Rank 0 continues the same MLflow run (its id is in <output_dir>/mlflow_run_id).

Light at import time (standard library, the job spec, the exit codes): ray and torch are
imported inside the functions, so that `--help` and the backend's tests do not pay for them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from mae_core.exitcodes import ExitCode, describe

from .jobspec import JobSpec

CODE_DIGEST_ENV = "MAECTL_CODE_DIGEST"
POINTER_FILE = "maectl_checkpoint.json"
# Workers' last lines (the error that ended the job) reach the job log through Ray's log monitor,
# a moment after the failure reaches the driver: wait that long before the driver exits.
LOG_FLUSH_S = 2.0
CODE_PACKAGES = ("orchestrator", "mae_core")


class WorkerFailed(RuntimeError):
    """A rank's run_job ended with a non-zero exit code; the driver reads `exit_code` to decide
    whether another attempt can help."""

    def __init__(self, rank: int, exit_code: int):
        super().__init__(f"rank {rank}: the runner exited with {describe(int(exit_code))}")
        self.rank, self.exit_code = rank, int(exit_code)

    def __reduce__(self):  # pickled back to the driver with its fields
        return (type(self), (self.rank, self.exit_code))


def _say(message: str) -> None:
    from .redact import scrub_text

    print(f"[maectl] {scrub_text(message)}", flush=True)


# -- the code that runs ----------------------------------------------------------------------------
def package_dirs() -> list[Path]:
    """The folders of the imported orchestrator and mae_core packages."""
    import importlib

    return [Path(importlib.import_module(name).__file__).parent for name in CODE_PACKAGES]


def code_digest() -> str:
    """sha256 (16 hex) over the .py files of orchestrator/ and mae_core/ as imported here: the
    same on the submitter and on the cluster exactly when both run the same code."""
    h = hashlib.sha256()
    for root in package_dirs():
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            h.update(f"{root.name}/{path.relative_to(root).as_posix()}\0".encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def code_mismatch(where: str) -> str | None:
    """Why the code imported here is not the submitter's (None when it is, or when the job
    carries no digest: a job submitted by hand)."""
    expected = os.environ.get(CODE_DIGEST_ENV)
    if not expected:
        return None
    from . import __version__

    found = code_digest()
    if found == expected:
        return None
    return (f"{where} runs maectl {__version__} with code {found} from {package_dirs()[0].parent}, but the job was submitted "
            f"with code {expected}: install the submitter's maectl on the cluster, or set cluster_has_maectl: false in the "
            f"site file so that the job ships its code (py_modules)")


# -- on every worker -------------------------------------------------------------------------------
class RayReport:
    """Ray Train's side of one rank: rank 0's metrics sink (remembers the latest values) and the
    hook the engine calls after every checkpoint (ray.train.report on all ranks)."""

    def __init__(self, rank: int):
        self.rank = rank
        self.latest: dict[str, float] = {}

    # MetricSink (rank 0 only)
    def log_metrics(self, metrics: dict, step: int) -> None:
        self.latest.update({k: float(v) for k, v in metrics.items()})
        self.latest["step"] = float(step)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    def on_checkpoint(self, url: str, step: int) -> None:
        import ray.train
        from ray.train import Checkpoint

        name = f"checkpoint-{step:09d}"
        if self.rank != 0:
            ray.train.report({}, checkpoint=None, checkpoint_dir_name=name)  # a barrier: every rank calls it
            return
        folder = tempfile.mkdtemp(prefix="maectl-ray-ckpt-")
        try:
            Path(folder, POINTER_FILE).write_text(json.dumps({"checkpoint": url, "step": step}))
            ray.train.report(dict(self.latest, step=float(step)), checkpoint=Checkpoint.from_directory(folder),
                             checkpoint_dir_name=name)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _resume_point(spec: dict) -> tuple[str, int] | None:
    """(engine checkpoint, step) to resume from: Ray Train's latest pointer, or a newer file in
    output_dir (a rank died between the save and its report)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        pointer = json.loads(Path(folder, POINTER_FILE).read_text())
    chosen = (pointer["checkpoint"], int(pointer["step"]))
    from mae_core.engine.checkpointing import CheckpointManager

    latest = CheckpointManager(spec["resolved"]["output_dir"]).latest()
    if latest is not None and latest.step > chosen[1]:
        chosen = (latest.path, latest.step)
    return chosen


def train_loop_per_worker(config: dict) -> None:
    """One rank of the job: the same runner every backend launches."""
    import ray.train
    import ray.util

    from .runner import run_job

    rank = ray.train.get_context().get_world_rank()
    print(f"[maectl] ray worker rank {rank}/{os.environ.get('WORLD_SIZE', '1')}: pid {os.getpid()} on "
          f"{ray.util.get_node_ip_address()}, code {code_digest()} from {package_dirs()[0].parent}", flush=True)
    problem = code_mismatch(f"rank {rank}")
    if problem:
        print(f"error: {problem}", file=sys.stderr, flush=True)
        raise WorkerFailed(rank, ExitCode.BAD_INPUT)
    spec = config["spec"]
    resume = _resume_point(spec)
    if resume is not None:
        spec = json.loads(json.dumps(spec))
        spec["resolved"]["checkpoint"]["resume"] = resume[0]
        if rank == 0:
            print(f"[maectl] restarted worker group: resuming from step {resume[1]} ({resume[0]}), Ray Train's get_checkpoint()",
                  flush=True)
    report = RayReport(rank)
    code = run_job(spec, sink=report if rank == 0 else None, on_checkpoint=report.on_checkpoint)
    if code != ExitCode.OK:
        raise WorkerFailed(rank, code)


# -- the driver ------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.ray_entry", description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="job spec (job.yaml in the job's working_dir, or any fsspec URL)")
    parser.add_argument("--workers", type=int, required=True, help="Ray Train workers = ranks")
    parser.add_argument("--gpus-per-worker", type=int, default=0)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--storage-path", required=True, help="RunConfig.storage_path: shared disk or s3://")
    parser.add_argument("--max-failures", type=int, default=3, help="worker-group restarts (-1: unlimited)")
    parser.add_argument("--placement-strategy", default="PACK", choices=["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"])
    parser.add_argument("--code", default="ship", choices=["ship", "installed"],
                        help="ship: orchestrator/mae_core travel in the runtime env; installed: the cluster's own maectl")
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
    problem = code_mismatch("the driver (on the Ray head)")
    if problem:
        print(f"error: {problem}", file=sys.stderr, flush=True)
        return ExitCode.BAD_INPUT
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


def _unwrap(error: BaseException) -> BaseException:
    """The user exception inside Ray Train's wrappers (UserExceptionWithTraceback, RayTaskError)."""
    seen = 0
    while seen < 10:
        inner = getattr(error, "_base_exc", None) or getattr(error, "cause", None)
        if not isinstance(inner, BaseException) or inner is error:
            return error
        error, seen = inner, seen + 1
    return error


def final_exit_code(error: BaseException) -> int | None:
    """The exit code that ends the job now, without another attempt: that of a rank that failed
    in a way no retry can fix (ExitCode.retryable is False; an import error counts as BAD_INPUT).
    None: worth another attempt (a killed worker, a lost node, an application error)."""
    failures = getattr(error, "worker_failures", None) or {}
    errors = list(failures.values()) or [getattr(error, "controller_failure", None) or error]
    for failure in errors:
        inner = _unwrap(failure)
        if isinstance(inner, ImportError) or "ModuleNotFoundError" in str(failure):
            return ExitCode.BAD_INPUT
        code = getattr(inner, "exit_code", None)
        if code is not None:
            try:
                if not ExitCode(code).retryable:
                    return code
            except ValueError:
                pass
    return None


def _fit(spec: JobSpec, args: argparse.Namespace) -> int:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = args.gpus_per_worker > 0
    resources = {"CPU": args.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = args.gpus_per_worker
    keep = int((spec.resolved.get("checkpoint") or {}).get("keep_last") or 2)
    limit = "unlimited" if args.max_failures < 0 else str(args.max_failures)
    _say(f"job {spec.handle}: TorchTrainer, {args.workers} worker(s) x {resources}, {args.placement_strategy}, "
         f"restarts up to {limit}, Ray storage {args.storage_path}/{spec.handle}, code {args.code} ({code_digest()})")
    failures = 0
    while True:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"spec": spec.to_dict()},  # plain data through Ray's pickling; run_job types it again
            scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=use_gpu, resources_per_worker=resources,
                                         placement_strategy=args.placement_strategy),
            run_config=RunConfig(
                name=spec.handle,
                storage_path=args.storage_path,
                # One attempt per fit(): this loop decides on restarts (see the module docstring).
                failure_config=FailureConfig(max_failures=0),
                checkpoint_config=CheckpointConfig(num_to_keep=keep),
            ),
        )
        try:
            trainer.fit()
        except Exception as err:  # noqa: BLE001 — Ray Train's TrainingFailedError and what it wraps
            code = final_exit_code(err)
            first_line = str(err).strip().splitlines()[-1][:300] if str(err).strip() else type(err).__name__
            if code is not None:
                time.sleep(LOG_FLUSH_S)
                _say(f"failed, not retried ({describe(code)}: another attempt cannot fix it): {first_line}")
                _end_tracking(spec, "FAILED")
                return code
            failures += 1
            if 0 <= args.max_failures < failures:
                time.sleep(LOG_FLUSH_S)
                _say(f"failed after the allowed restarts (max_failures {args.max_failures}): {first_line}")
                _end_tracking(spec, "FAILED")
                return ExitCode.TOO_MANY_RESTARTS
            _say(f"worker group failed ({first_line}); restart {failures}/{limit} from Ray Train's latest checkpoint")
            continue
        _say("ray train run finished")
        return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
