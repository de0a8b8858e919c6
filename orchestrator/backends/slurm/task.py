"""The task side of the SLURM backend: what runs on every task (rank) of the job.

`SlurmTask` is what submitit pickles at submission and calls on each task: it turns submitit's
JobEnvironment into the torch.distributed variables and runs `orchestrator.runner.run_job` in
the task's own process. Pickled by reference (this module is imported on the node), so it
carries only small values: the spec's path, some variables and the requeue bound.

Preemption and time limits. SLURM sends USR2 `slurm.signal_delay_s` before the end (submitit's
`--signal`); every task then asks the engine to checkpoint at the next optimizer step, and once
it has, rank 0 hands over to submitit, which calls `SlurmTask.checkpoint()` (a fresh submission of
the same task) and requeues the job: the next run resumes from that checkpoint and continues the
same MLflow run (both found in output_dir), losing no step. SIGTERM (cancel, `scontrol requeue`,
preemption without a warning signal) ends the run at once, closing its MLflow run as KILLED: no
checkpoint is attempted, because SLURM signals every process of the step and torch's DataLoader
workers die of SIGTERM, so the step in flight could not finish. A requeued run then resumes from
the latest periodic checkpoint, losing at most one checkpoint interval. `scontrol requeue` never
calls checkpoint(): the job restarts from its submission, which is the same task. These restarts
are bounded by `slurm.max_requeues` (SLURM_RESTART_COUNT less the failure retries below), the
time-outs among them also by submitit's own count (set to the same number).

Application failures. A rank whose run ends with ExitCode.FAILED (an error the runner does not
classify: a collective that lost its peer, an NCCL timeout, a bad node, a bug) requeues the job
itself, `scontrol requeue`, at most `slurm.max_restarts` times; the next run resumes from the
latest checkpoint into the same MLflow run. Of a run's ranks that fail, the first to create the
run's marker (<spec folder>/restarts/<job id>.run<N>.failed, O_EXCL on the shared folder) decides;
the markers count the retries. A bad config or input (ExitCode.BAD_INPUT), a non-finite loss and
a SIGTERM are never retried this way. The code comes from the job's snapshot (backend.py), so
every run imports what the first one did.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import traceback
from pathlib import Path

from mae_core.exitcodes import ExitCode

from ...redact import scrub_text

# A port per job, so that two jobs sharing a node do not fight over one rendezvous port: below
# Linux's ephemeral range (32768+) and above the development stack's service ports.
MASTER_PORT_BASE, MASTER_PORT_SPAN = 30000, 2500
# After SIGTERM, how long a warning signal may still come and ask for a requeue: submitit's
# `job._interrupt()` sends SIGTERM then USR2, as some sites' preemption does.
WARNING_AFTER_TERM_S = 10.0
# Tasks other than rank 0 wait this long for rank 0's requeue to end them.
REQUEUE_WAIT_S = 60.0
FAILURES_DIR = "restarts"  # beside the job spec: one marker per retried application failure
CODE_ROOT = Path(__file__).resolve().parents[3]  # where this run imports orchestrator/ from (the snapshot)


def master_port(job_id: int) -> int:
    return MASTER_PORT_BASE + job_id % MASTER_PORT_SPAN


def distributed_env(job_env) -> dict[str, str]:
    """torch.distributed's variables from submitit's JobEnvironment (SLURM_PROCID, ...)."""
    tasks_per_node = max(job_env.num_tasks // max(job_env.num_nodes, 1), 1)
    return {
        "RANK": str(job_env.global_rank),
        "LOCAL_RANK": str(job_env.local_rank),
        "WORLD_SIZE": str(job_env.num_tasks),
        "LOCAL_WORLD_SIZE": str(tasks_per_node),
        "NODE_RANK": str(job_env.node),
        "MASTER_ADDR": job_env.hostnames[0],
        # The raw id: each array element is its own job and gets its own port.
        "MASTER_PORT": str(master_port(int(job_env.raw_job_id))),
    }


def warning_signal():
    """The signal submitit asks SLURM for before the end (USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise)."""
    import submitit

    return getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)


def _say(message: str) -> None:
    print(f"[maectl] {scrub_text(message)}", flush=True)


def failure_markers(spec_path: str, job_id: str) -> list[Path]:
    """The markers of this job's retried application failures, one per failed run."""
    return sorted((Path(spec_path).parent / FAILURES_DIR).glob(f"{job_id}.run*.failed"))


class SlurmTask:
    """What submitit runs on every task: one rank of the job."""

    def __init__(self, spec_path: str, env: dict[str, str], max_requeues: int, max_restarts: int = 0):
        self.spec_path, self.env, self.max_requeues, self.max_restarts = spec_path, dict(env), max_requeues, max_restarts

    def __setstate__(self, state):
        self.__dict__.update({"max_restarts": 0, **state})  # a task pickled before max_restarts existed

    def _requeues(self, job_id: str) -> int:
        """Restarts so far that were not failure retries (preemption, time limit, scontrol requeue)."""
        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        return max(restarts - len(failure_markers(self.spec_path, job_id)), 0)

    def __call__(self) -> dict:
        import submitit

        from mae_core.engine import StopFlag

        from ...jobspec import JobSpecError
        from ...runner import JobTerminated, load_spec, run_job

        job_env = submitit.JobEnvironment()
        os.environ.update(self.env)
        os.environ.update(distributed_env(job_env))
        rank, restarts = job_env.global_rank, int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        if rank == 0:
            _say(f"SLURM job {job_env.job_id}, run {restarts + 1}: {job_env.num_tasks} task(s) on {job_env.num_nodes} node(s), "
                 f"rendezvous {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}")
            _say(f"code: {CODE_ROOT}")
        _say(f"rank {rank} of {job_env.num_tasks} on node {job_env.hostnames[job_env.node]} (host {socket.gethostname()})")
        requeues = self._requeues(job_env.job_id)
        if requeues > self.max_requeues:
            if rank == 0:
                _say(f"not running again: requeued {requeues} times, slurm.max_requeues is {self.max_requeues}")
            raise SystemExit(ExitCode.TOO_MANY_RESTARTS)

        # submitit's USR2 handler checkpoints the callable and requeues at once, in the middle of a
        # step. Ours first lets the engine write a checkpoint at the next step boundary (all ranks
        # agree on it), then hands over to submitit's handler.
        warning = warning_signal()
        submitit_handler = signal.getsignal(warning)
        stop, warned, terminated = StopFlag(), [], []

        def on_warning(_signum, _frame):
            warned.append(time.monotonic())
            stop.request()

        def on_sigterm(_signum, _frame):
            # Once: a second SIGTERM (submitit's own `scontrol requeue`) must not interrupt the cleanup.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            terminated.append(time.monotonic())
            raise JobTerminated()

        signal.signal(warning, on_warning)
        signal.signal(signal.SIGTERM, on_sigterm)
        try:
            spec = load_spec(self.spec_path)
        except (OSError, JobSpecError) as err:  # no retry can help
            print(f"error: {self.spec_path}: {err}", flush=True)
            raise SystemExit(int(ExitCode.BAD_INPUT)) from None
        try:
            code = run_job(spec, stop=stop)
        except JobTerminated:  # before or after the engine's own handling of it
            code = ExitCode.TERMINATED
        except Exception:  # noqa: BLE001 — not classified by the runner (a lost peer, a bug): an application failure
            traceback.print_exc()
            code = ExitCode.FAILED
        if terminated and code == ExitCode.FAILED:
            # Raised while SIGTERM was ending the run (SLURM signals the DataLoader workers too, whose
            # death then surfaces as an error): the end of a cancel or requeue, not a failure.
            code = ExitCode.TERMINATED
        if code == ExitCode.OK:
            return {"rank": rank, "exit_code": 0}
        if code == ExitCode.FAILED:
            self._retry_after_failure(job_env.job_id, rank, restarts)
            raise SystemExit(int(code))
        if code == ExitCode.TERMINATED:
            deadline = time.monotonic() + WARNING_AFTER_TERM_S
            while not warned and time.monotonic() < deadline:
                time.sleep(0.2)
        # PREEMPTED without a warning: stopped by SIGUSR1, on purpose.
        if code in (ExitCode.PREEMPTED, ExitCode.TERMINATED) and warned:
            self._requeue(rank, warning, submitit_handler)
        raise SystemExit(int(code))

    @staticmethod
    def _requeue(rank: int, warning, submitit_handler) -> None:
        if rank != 0:
            time.sleep(REQUEUE_WAIT_S)  # rank 0 requeues the job, which ends this task
            return
        signal.signal(warning, submitit_handler)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the requeue's own SIGTERM must not cut it short
        # checkpoint(), then `scontrol requeue`, then exit; UncompletedJobError when it may not.
        from submitit.core.utils import UncompletedJobError

        try:
            submitit_handler(warning, None)
        except UncompletedJobError as err:
            _say(f"stopping for good: {err}")
            raise SystemExit(ExitCode.TOO_MANY_RESTARTS) from None

    def _retry_after_failure(self, job_id: str, rank: int, restarts: int) -> bool:
        """Requeue the job after this rank's application failure, unless another failed rank of
        this run already did or the retries are used up. True if this rank requeued it."""
        folder = Path(self.spec_path).parent / FAILURES_DIR
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / f"{job_id}.run{restarts + 1}.failed"
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return False  # another rank of this run claimed the failure (and requeued, or declined)
        with os.fdopen(fd, "w") as f:
            f.write(f"rank {rank} on {socket.gethostname()}, exit {int(ExitCode.FAILED)}, {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        retry = len(failure_markers(self.spec_path, job_id))
        if retry > self.max_restarts:
            _say(f"application failure on rank {rank}; not retrying: {retry - 1} retries done, slurm.max_restarts is {self.max_restarts}")
            return False
        _say(f"application failure on rank {rank} (exit {int(ExitCode.FAILED)}): requeueing the job, retry {retry} of at most "
             f"{self.max_restarts}; the next run resumes from the latest checkpoint")
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the requeue's SIGTERM must not cut this short
        result = subprocess.run(["scontrol", "requeue", str(job_id)], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            marker.unlink(missing_ok=True)  # not a retry after all (e.g. the job is being requeued already)
            _say(f"scontrol requeue {job_id} failed: {(result.stderr or result.stdout).strip()}")
            return False
        return True

    def checkpoint(self, *args, **kwargs):
        """submitit's hook on the warning signal: what to run when the job runs again."""
        import submitit
        from submitit.helpers import DelayedSubmission

        requeues = self._requeues(submitit.JobEnvironment().job_id)
        if requeues >= self.max_requeues:
            _say(f"not requeueing: already requeued {requeues} times (slurm.max_requeues {self.max_requeues})")
            return None
        _say(f"requeueing (restart {requeues + 1} of at most {self.max_requeues}); the next run resumes from the checkpoint just written")
        return DelayedSubmission(SlurmTask(self.spec_path, self.env, self.max_requeues, self.max_restarts))
