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
calls checkpoint(): the job restarts from its submission, which is the same task. Restarts of
every kind are bounded by `slurm.max_requeues` (SLURM_RESTART_COUNT), the time-outs among them
also by submitit's own count (set to the same number).
"""

from __future__ import annotations

import os
import signal
import time

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


class SlurmTask:
    """What submitit runs on every task: one rank of the job."""

    def __init__(self, spec_path: str, env: dict[str, str], max_requeues: int):
        self.spec_path, self.env, self.max_requeues = spec_path, dict(env), max_requeues

    def __call__(self) -> dict:
        import submitit

        from mae_core.engine import StopFlag

        from ...runner import JobTerminated, load_spec, run_job

        job_env = submitit.JobEnvironment()
        os.environ.update(self.env)
        os.environ.update(distributed_env(job_env))
        rank, restarts = job_env.global_rank, int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        if rank == 0:
            _say(f"SLURM job {job_env.job_id}, run {restarts + 1}: {job_env.num_tasks} task(s) on {job_env.num_nodes} node(s), "
                 f"rendezvous {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}")
        if restarts > self.max_requeues:
            if rank == 0:
                _say(f"not running again: restarted {restarts} times, slurm.max_requeues is {self.max_requeues}")
            raise SystemExit(ExitCode.TOO_MANY_RESTARTS)

        # submitit's USR2 handler checkpoints the callable and requeues at once, in the middle of a
        # step. Ours first lets the engine write a checkpoint at the next step boundary (all ranks
        # agree on it), then hands over to submitit's handler.
        warning = warning_signal()
        submitit_handler = signal.getsignal(warning)
        stop, warned = StopFlag(), []

        def on_warning(_signum, _frame):
            warned.append(time.monotonic())
            stop.request()

        def on_sigterm(_signum, _frame):
            # Once: a second SIGTERM (submitit's own `scontrol requeue`) must not interrupt the cleanup.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            raise JobTerminated()

        signal.signal(warning, on_warning)
        signal.signal(signal.SIGTERM, on_sigterm)
        try:
            code = run_job(load_spec(self.spec_path), stop=stop)
        except JobTerminated:  # before or after the engine's own handling of it
            code = ExitCode.TERMINATED
        if code == ExitCode.OK:
            return {"rank": rank, "exit_code": 0}
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

    def checkpoint(self, *args, **kwargs):
        """submitit's hook on the warning signal: what to run when the job runs again."""
        from submitit.helpers import DelayedSubmission

        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        if restarts >= self.max_requeues:
            _say(f"not requeueing: already restarted {restarts} times (slurm.max_requeues {self.max_requeues})")
            return None
        _say(f"requeueing (restart {restarts + 1} of at most {self.max_requeues}); the next run resumes from the checkpoint just written")
        return DelayedSubmission(SlurmTask(self.spec_path, self.env, self.max_requeues))
