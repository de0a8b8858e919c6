"""The SLURM backend, through submitit: one sbatch job, one task (rank) per GPU.

    submit:   the job spec goes to <job folder>/job.yaml; submitit pickles a `SlurmTask` beside it
              and runs `sbatch` on the script it renders (`--dry-run` prints that script).
    per task: `SlurmTask.__call__` turns submitit's JobEnvironment into the torch.distributed
              variables and runs `orchestrator.runner.run_job` in the task's own process.

The job folder (submitit's: scripts, pickles, one log per task) must be on storage that the
submitting machine and every node share; it defaults to <output_dir>/slurm, and the output
folder (checkpoints, metrics, the MLflow run id) must be shared anyway.

Preemption and time limits. SLURM sends USR2 `slurm.signal_delay_s` before the end (submitit's
`--signal`); every task then asks the engine to checkpoint at the next optimizer step, and once
it has, rank 0 hands over to submitit, which calls `SlurmTask.checkpoint()` (a fresh submission of
the same task) and requeues the job: the next run resumes from that checkpoint and continues the
same MLflow run (both found in output_dir), losing no step. SIGTERM (cancel, `scontrol requeue`,
preemption without a warning signal) ends the run at once, as the local backend does, closing
its MLflow run as KILLED: no checkpoint is attempted, because SLURM signals every process of the
step and torch's DataLoader workers die of SIGTERM, so the step in flight could not finish. A
requeued run then resumes from the latest periodic checkpoint, losing at most one checkpoint
interval. `scontrol requeue` never calls checkpoint():
the job restarts from its submission, which is the same task. Restarts of every kind are bounded
by `slurm.max_requeues` (SLURM_RESTART_COUNT), the time-outs among them also by submitit's own
count (set to the same number).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..experiments import HANDLE_PLACEHOLDER
from ..redact import scrub_text
from .base import Backend, LaunchRequest, Status, Submitted, dump_spec, follow_log, passed_environment, shell_quote, write_spec
from .local import EXIT_MEANINGS
from .states import JobState

JOB_FOLDER = "slurm"  # under output_dir, unless slurm.job_folder is set
SPEC_NAME = "job.yaml"
# A port per job, so that two jobs sharing a node do not fight over one rendezvous port: below
# Linux's ephemeral range (32768+) and above the development stack's service ports.
MASTER_PORT_BASE, MASTER_PORT_SPAN = 30000, 2500
# Folders that each node has its own copy of: useless for a job folder or output of a multi-node job.
NODE_LOCAL_PREFIXES = ("/tmp", "/var/tmp", "/dev/shm", "/run")
# sbatch options that maectl sets from `resources` (or that submitit owns): not in sbatch_options.
OWNED_SBATCH_OPTIONS = {
    "partition": "resources.partition", "p": "resources.partition", "account": "resources.account", "A": "resources.account",
    "qos": "resources.qos", "q": "resources.qos", "constraint": "resources.constraint", "C": "resources.constraint",
    "nodes": "resources.nodes", "N": "resources.nodes", "ntasks-per-node": "resources.tasks_per_node", "ntasks": "resources.tasks_per_node",
    "n": "resources.tasks_per_node", "cpus-per-task": "resources.cpus_per_task", "c": "resources.cpus_per_task",
    "gpus-per-node": "resources.gpus_per_node", "mem": "resources.mem_gb", "time": "resources.time_limit_min", "t": "resources.time_limit_min",
    "signal": "slurm.signal_delay_s", "output": "slurm.job_folder", "error": "slurm.job_folder", "o": "slurm.job_folder", "e": "slurm.job_folder",
    "array": None, "job-name": None, "J": None, "open-mode": None,
}
# Beyond the runner's exit codes: the job's own refusal to run again.
EXIT_TOO_MANY_REQUEUES = 5
SLURM_EXIT_MEANINGS = {**EXIT_MEANINGS, EXIT_TOO_MANY_REQUEUES: "restarted more often than slurm.max_requeues allows"}
# After SIGTERM, how long a warning signal may still come and ask for a requeue: submitit's
# `job._interrupt()` sends SIGTERM then USR2, as some sites' preemption does.
WARNING_AFTER_TERM_S = 10.0
# Tasks other than rank 0 wait this long for rank 0's requeue to end them.
REQUEUE_WAIT_S = 60.0

# SLURM job states (scontrol's and sacct's names) -> maectl's, with what to tell the user.
NATIVE_STATES: dict[str, tuple[JobState, str | None]] = {
    "PENDING": (JobState.PENDING, None),
    "CONFIGURING": (JobState.PENDING, "nodes are booting"),
    "RESV_DEL_HOLD": (JobState.PENDING, "held: its reservation was deleted"),
    "RUNNING": (JobState.RUNNING, None),
    "COMPLETING": (JobState.RUNNING, "completing"),
    "STAGE_OUT": (JobState.RUNNING, "staging out"),
    "SIGNALING": (JobState.RUNNING, "being signalled"),
    "RESIZING": (JobState.RUNNING, "resizing"),
    "SUSPENDED": (JobState.RUNNING, "suspended by the scheduler"),
    "STOPPED": (JobState.RUNNING, "stopped (SIGSTOP)"),
    "REQUEUED": (JobState.REQUEUED, "requeued; resumes from its latest checkpoint"),
    "REQUEUE_FED": (JobState.REQUEUED, "requeued; resumes from its latest checkpoint"),
    "REQUEUE_HOLD": (JobState.REQUEUED, "requeued and held (`scontrol release`)"),
    "COMPLETED": (JobState.COMPLETED, "done"),
    "CANCELLED": (JobState.CANCELLED, None),
    "REVOKED": (JobState.CANCELLED, "revoked (federation)"),
    "FAILED": (JobState.FAILED, None),
    "TIMEOUT": (JobState.FAILED, "hit its time limit and was not requeued"),
    "PREEMPTED": (JobState.FAILED, "preempted and not requeued"),
    "NODE_FAIL": (JobState.FAILED, "a node failed"),
    "BOOT_FAIL": (JobState.FAILED, "a node failed to boot"),
    "OUT_OF_MEMORY": (JobState.FAILED, "out of memory (raise resources.mem_gb)"),
    "DEADLINE": (JobState.FAILED, "missed its deadline"),
    "SPECIAL_EXIT": (JobState.FAILED, "held after a special exit"),
}


def map_state(native: str, *, restarts: int = 0, reason: str | None = None, exit_code: int | None = None) -> Status:
    """One SLURM job state (with the job's restart count and pending reason) -> maectl's Status."""
    native = native.split()[0].rstrip("+") if native else "UNKNOWN"  # sacct: "CANCELLED by 0", "RUNNING+"
    state, message = NATIVE_STATES.get(native, (JobState.UNKNOWN, f"SLURM state {native}"))
    if state == JobState.PENDING and restarts:
        state, message = JobState.REQUEUED, f"requeued {restarts}x; resumes from its latest checkpoint"
    if state in (JobState.PENDING, JobState.REQUEUED) and reason and reason not in ("None", "(null)"):
        message = f"{message}; waiting: {reason}" if message else f"waiting: {reason}"
    if state == JobState.FAILED and exit_code and message is None:
        message = SLURM_EXIT_MEANINGS.get(exit_code, f"exit code {exit_code}")
    return Status(state, exit_code if state.terminal else None, message)


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


def _say(message: str) -> None:
    print(f"[maectl] {scrub_text(message)}", flush=True)


class SlurmTask:
    """What submitit runs on every task: one rank of the job. Pickled by reference (this module
    is imported on the node), so it carries only small values: the spec's path and some variables."""

    def __init__(self, spec_path: str, env: dict[str, str], max_requeues: int):
        self.spec_path, self.env, self.max_requeues = spec_path, dict(env), max_requeues

    def __call__(self) -> dict:
        import submitit

        from mae_core.engine import StopFlag

        from ..runner import JobTerminated, load_spec, run_job

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
            raise SystemExit(EXIT_TOO_MANY_REQUEUES)

        # submitit's USR2 handler checkpoints the callable and requeues at once, in the middle of a
        # step. Ours first lets the engine write a checkpoint at the next step boundary (all ranks
        # agree on it), then hands over to submitit's handler.
        warning_signal = submitit.JobEnvironment._usr_sig()
        submitit_handler = signal.getsignal(warning_signal)
        stop, warned = StopFlag(), []

        def on_warning(_signum, _frame):
            warned.append(time.monotonic())
            stop.request()

        def on_sigterm(_signum, _frame):
            # Once: a second SIGTERM (submitit's own `scontrol requeue`) must not interrupt the cleanup.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            raise JobTerminated()

        signal.signal(warning_signal, on_warning)
        signal.signal(signal.SIGTERM, on_sigterm)
        try:
            code = run_job(load_spec(self.spec_path), stop=stop)
        except JobTerminated:  # before or after the engine's own handling of it
            code = 143
        if code == 0:
            return {"rank": rank, "exit_code": 0}
        if code == 143:
            deadline = time.monotonic() + WARNING_AFTER_TERM_S
            while not warned and time.monotonic() < deadline:
                time.sleep(0.2)
        if code in (3, 143) and warned:  # 3 without a warning: stopped by SIGUSR1, on purpose
            self._requeue(rank, warning_signal, submitit_handler)
        raise SystemExit(code)

    @staticmethod
    def _requeue(rank: int, warning_signal, submitit_handler) -> None:
        if rank != 0:
            time.sleep(REQUEUE_WAIT_S)  # rank 0 requeues the job, which ends this task
            return
        signal.signal(warning_signal, submitit_handler)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the requeue's own SIGTERM must not cut it short
        # checkpoint(), then `scontrol requeue`, then exit; UncompletedJobError when it may not.
        from submitit.core.utils import UncompletedJobError

        try:
            submitit_handler(warning_signal, None)
        except UncompletedJobError as err:
            _say(f"stopping for good: {err}")
            raise SystemExit(EXIT_TOO_MANY_REQUEUES) from None

    def checkpoint(self, *args, **kwargs):
        """submitit's hook on the warning signal: what to run when the job runs again."""
        from submitit.helpers import DelayedSubmission

        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        if restarts >= self.max_requeues:
            _say(f"not requeueing: already restarted {restarts} times (slurm.max_requeues {self.max_requeues})")
            return None
        _say(f"requeueing (restart {restarts + 1} of at most {self.max_requeues}); the next run resumes from the checkpoint just written")
        return DelayedSubmission(SlurmTask(self.spec_path, self.env, self.max_requeues))


# -- what the cluster offers ----------------------------------------------------------------------
@dataclass
class NodeOffer:
    name: str
    cpus: int
    memory_mb: int
    gpus: int
    features: set[str]


@dataclass
class PartitionOffer:
    name: str
    default: bool
    time_limit_min: int | None  # None: no limit
    nodes: list[NodeOffer]


def _gpu_count(gres: str) -> int:
    """sinfo's %G: "gpu:8", "gpu:a100:4(S:0-1),gpu:a100:4(S:2-3)", "(null)"."""
    total = 0
    for item in gres.split(","):
        parts = re.sub(r"\(.*?\)", "", item).split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def _minutes(limit: str) -> int | None:
    """sinfo's %l: "infinite", "30:00", "1-00:00:00", "2:00:00", "UNLIMITED"."""
    if not limit or limit.lower() in ("infinite", "unlimited", "n/a"):
        return None
    days, _, rest = limit.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)  # "MM:SS" -> [0, MM, SS]
    hours, minutes, seconds = parts
    return int(days or 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def parse_sinfo(text: str) -> dict[str, PartitionOffer]:
    """`sinfo -h -N -o '%P|%N|%c|%m|%G|%f|%l'`: one line per (node, partition)."""
    partitions: dict[str, PartitionOffer] = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 7:
            continue
        name, node, cpus, mem, gres, features, limit = fields
        default = name.endswith("*")
        name = name.rstrip("*")
        part = partitions.setdefault(name, PartitionOffer(name, default, _minutes(limit), []))
        part.nodes.append(NodeOffer(node, int(cpus.rstrip("+") or 0), int(re.sub(r"\D.*", "", mem) or 0), _gpu_count(gres),
                                    {f for f in features.split(",") if f and f != "(null)"}))
    return partitions


def query_partitions() -> dict[str, PartitionOffer]:
    result = subprocess.run(["sinfo", "-h", "-N", "-o", "%P|%N|%c|%m|%G|%f|%l"], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"sinfo failed: {result.stderr.strip() or result.stdout.strip()}")
    return parse_sinfo(result.stdout)


# -- the job as submitit sees it ------------------------------------------------------------------
def job_folder(request: LaunchRequest) -> str:
    """Where submitit keeps this job's script, pickles and logs (one folder per job)."""
    configured = request.experiment.spec.slurm.job_folder
    if configured:
        return f"{configured.rstrip('/')}/{request.handle}"
    return f"{request.experiment.run.output_dir.rstrip('/')}/{JOB_FOLDER}"


def array_folder(request: LaunchRequest) -> str:
    """A sweep's job array folder (one for all points): <slurm.job_folder>/<sweep id>, else
    <output_root>/<experiment>/<sweep id>/slurm. Each point's spec goes to <folder>/<handle>/job.yaml."""
    sweep_id = request.spec["sweep"]["id"]
    configured = request.experiment.spec.slurm.job_folder
    if configured:
        return f"{configured.rstrip('/')}/{sweep_id}"
    return f"{request.experiment.output_root.rstrip('/')}/{request.experiment.name}/{sweep_id}/{JOB_FOLDER}"


def array_plan(requests: list[LaunchRequest]) -> tuple[str, dict, int] | None:
    """(folder, executor parameters, max requeues) of one job array for these sweep points, or
    None where they must be separate jobs: fewer than 2, not one sweep, a dependency (afterok is
    per job), different allocations or requeue bounds, or a folder the points' own checks did not cover."""
    if len(requests) < 2 or any(r.depends_on or "sweep" not in r.spec for r in requests):
        return None
    first = requests[0]
    if any(r.spec["sweep"]["id"] != first.spec["sweep"]["id"] or r.experiment.name != first.experiment.name for r in requests):
        return None

    def shared(request: LaunchRequest) -> dict:
        params = {k: v for k, v in executor_parameters(request).items() if k not in ("job_name", "comment")}
        return {**params, "max_requeues": request.experiment.spec.slurm.max_requeues}

    params = shared(first)
    if any(shared(r) != params for r in requests[1:]):
        return None
    folder = array_folder(first)
    if "://" in folder or not os.path.isabs(folder) or (first.resources.nodes > 1 and _is_node_local(folder)):
        return None  # e.g. output_root on s3:// with output_dir elsewhere: separate jobs, each in its checked folder
    max_requeues = params.pop("max_requeues")
    sweep_id = first.spec["sweep"]["id"]
    params.update({"job_name": f"{first.experiment.name}.{sweep_id}", "comment": f"maectl {sweep_id}", "array_parallelism": len(requests)})
    return folder, params, max_requeues


def _mem(mem_gb: float) -> str:
    # As submitit writes it: whole GB when it can, else MB.
    return f"{int(mem_gb)}GB" if mem_gb == int(mem_gb) else f"{int(mem_gb * 1024)}MB"


def executor_parameters(request: LaunchRequest) -> dict:
    """submitit's SlurmExecutor parameters (its native names) for this request."""
    res, slurm = request.resources, request.experiment.spec.slurm
    if res.time_limit_min is None:
        raise request.experiment.locator.error(
            "resources.time_limit_min", "is required on SLURM: submitit tells a time-out from a preemption by it (set the partition's limit or less)")
    if slurm.signal_delay_s >= res.time_limit_min * 60:
        raise request.experiment.locator.error(
            "slurm.signal_delay_s", f"{slurm.signal_delay_s} s is not shorter than the time limit ({res.time_limit_min} min): "
                                    f"the warning would come at once")
    additional = {"requeue": True}  # preemption and time-limit requeues need a requeueable job, whatever the site's default
    for key, value in res.sbatch_options.items():
        if value is False or value is None:
            continue  # `exclusive: false` means: leave the option out
        additional[key] = value
    params = {
        "job_name": f"{request.experiment.name}.{request.handle}",
        "comment": f"maectl {request.handle}",
        "time": res.time_limit_min,
        "nodes": res.nodes,
        "ntasks_per_node": res.ranks_per_node,
        "signal_delay_s": slurm.signal_delay_s,
        # One log per task (rank 0's also holds the job script's own output): ordered, like the local backend's.
        "stderr_to_stdout": True,
        "additional_parameters": additional,
    }
    optional = {
        "partition": res.partition, "account": res.account, "qos": res.qos, "constraint": res.constraint,
        "cpus_per_task": res.cpus_per_task, "gpus_per_node": res.gpus_per_node or None,
        "mem": _mem(res.mem_gb) if res.mem_gb else None,
        "setup": list(slurm.setup) or None, "srun_args": list(slurm.srun_args) or None,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    add_dependencies(params, request)  # pipelines: see below
    return params


# -- pipelines: afterok (orchestrator/pipelines.py; LaunchRequest.depends_on) -----------------------
def add_dependencies(params: dict, request: LaunchRequest) -> None:
    """A follow-up (a fine-tune after its pretraining) waits in the queue until the jobs it follows
    have completed OK, however often they were requeued (the job id stays). If one of them fails
    or is cancelled, kill-on-invalid-dep makes SLURM cancel the follow-up at once (reason
    DependencyNeverSatisfied) rather than leave it pending forever."""
    if not request.depends_on:
        return
    ids = [dep.native_id or f"<job id of {dep.handle}>" for dep in request.depends_on]  # a dry-run has no ids yet
    params["dependency"] = "afterok:" + ":".join(ids)
    params["additional_parameters"]["kill-on-invalid-dep"] = "yes"


def task_environment(request: LaunchRequest) -> dict[str, str]:
    """Set on every task on top of what sbatch passes on (the submitting environment)."""
    env = {"PYTHONUNBUFFERED": "1", "MAECTL_JOB": request.handle}
    if request.resources.cpus_per_task:
        env["OMP_NUM_THREADS"] = str(request.resources.cpus_per_task)
    return {**env, **request.env}


def _executor(folder: str, params: dict, max_requeues: int, *, render_only: bool = False):
    import submitit

    cls = submitit.SlurmExecutor
    if render_only:
        class Renderer(submitit.SlurmExecutor):
            """SlurmExecutor refuses to exist where `srun` is missing; a dry-run (on a laptop) only renders."""

            @classmethod
            def affinity(cls) -> int:
                return 1

        cls = Renderer
    executor = cls(folder=folder, max_num_timeout=max_requeues)
    executor.update_parameters(**params)
    return executor


def sbatch_script(request: LaunchRequest) -> str:
    """The exact script `submit` hands to sbatch, rendered by submitit itself."""
    params = executor_parameters(request)
    executor = _executor(job_folder(request), params, request.experiment.spec.slurm.max_requeues, render_only=True)
    return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")


# -- live job state ---------------------------------------------------------------------------------
def _scontrol_job(job_id: str) -> dict[str, str] | None:
    """`scontrol show job -o`, as key -> value; None once the controller has forgotten the job."""
    result = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:
            return None
        raise RuntimeError(f"scontrol failed: {result.stderr.strip()}")
    line = result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""
    return dict(re.findall(r"(\w+)=(\S*)", line))


def _sacct_job(job_id: str) -> dict[str, str] | None:
    """The job's allocation line from accounting (its latest run), None if accounting has none."""
    result = subprocess.run(["sacct", "-X", "-n", "-P", "-j", str(job_id), "-o", "State,ExitCode,Reason,End"],
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"sacct failed: {result.stderr.strip()}")
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if not lines:
        return None
    state, exit_code, reason, end = (lines[-1].split("|") + ["", "", ""])[:4]
    return {"JobState": state, "ExitCode": exit_code, "Reason": reason, "EndTime": end}


def _timestamp(text: str | None) -> float | None:
    """SLURM's local "2026-11-27T21:14:45" -> epoch seconds; None for "Unknown", "None", ""."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(text).timestamp() if text else None
    except ValueError:
        return None


def native_status(job_id: str) -> Status:
    info = _scontrol_job(job_id) or _sacct_job(job_id)
    if info is None:
        return Status(JobState.UNKNOWN, None, f"SLURM has no job {job_id} (neither scontrol nor sacct knows it)")
    exit_text = info.get("ExitCode", "")
    exit_code = int(exit_text.split(":")[0]) if exit_text[:1].isdigit() else None
    status = map_state(info.get("JobState", ""), restarts=int(info.get("Restarts") or 0), reason=info.get("Reason"),
                       exit_code=exit_code)
    if status.state.terminal:  # before that, EndTime is the time limit's projection
        status.finished_at = _timestamp(info.get("EndTime"))
    return status


def _is_node_local(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in NODE_LOCAL_PREFIXES)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class SlurmBackend(Backend):
    name = "slurm"
    supports_dependencies = True  # add_dependencies: afterok + kill-on-invalid-dep

    # -- pre-submit checks --------------------------------------------------------------------------
    def check(self, request: LaunchRequest) -> None:
        where = request.experiment.locator
        for key in request.resources.sbatch_options:
            name = key.lstrip("-").replace("_", "-")  # submitit writes `cpus_per_task` as --cpus-per-task
            if name in OWNED_SBATCH_OPTIONS:
                owner = OWNED_SBATCH_OPTIONS[name]
                raise where.error(f"resources.sbatch_options.{key}",
                                  f"set {owner} instead" if owner else "is set by maectl/submitit and cannot be overridden")
        executor_parameters(request)  # time limit present
        dry_run = request.handle == HANDLE_PLACEHOLDER
        self._check_locations(request, contact=not dry_run)
        if dry_run:
            return  # a dry-run shows the script without contacting SLURM or the data (it works on a laptop)
        self._check_cluster(request)
        self._check_data(request)

    def _check_locations(self, request: LaunchRequest, contact: bool = True) -> None:
        """The job folder and output folder: reachable from every node, and (`contact`) writable."""
        where, res = request.experiment.locator, request.resources
        output_dir = request.experiment.run.output_dir
        folder_key = "slurm.job_folder" if request.experiment.spec.slurm.job_folder else "output_dir"
        folder = job_folder(request)
        if "://" in folder:
            raise where.error("slurm.job_folder", f"the job folder must be a shared POSIX path (sbatch reads the script from it), "
                                                   f"not {folder.split('://')[0]}://; set slurm.job_folder when output_dir is on object storage")
        for key, path in (("output_dir", output_dir), (folder_key, folder)):
            if "://" in path and not path.startswith("file://"):
                continue  # object storage is shared; the engine checks writing at start
            path = path.removeprefix("file://")
            if not os.path.isabs(path):
                raise where.error(key, f"{path} is relative: the nodes start in another directory; give an absolute path")
            if res.nodes > 1 and _is_node_local(path):
                raise where.error(key, f"{path} is node-local storage, but the job spans {res.nodes} nodes: "
                                       f"every node must see the same folder (use shared storage)")
            existing = _nearest_existing(Path(path))
            if contact and not os.access(existing, os.W_OK | os.X_OK):
                raise where.error(key, f"{path} is not writable ({existing} does not let this user create it)")

    def _check_cluster(self, request: LaunchRequest) -> None:
        where, res = request.experiment.locator, request.resources
        if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
            raise where.error("backend", "no SLURM client here (sinfo/sbatch not on PATH): submit from a login node")
        partitions = query_partitions()
        if res.partition:
            if res.partition not in partitions:
                known = ", ".join(sorted(partitions)) or "none"
                raise where.error("resources.partition", f"SLURM has no partition {res.partition!r} (sinfo lists: {known})")
            part = partitions[res.partition]
        else:
            defaults = [p for p in partitions.values() if p.default]
            if not defaults:
                raise where.error("resources.partition", f"is not set and SLURM has no default partition (sinfo lists: {', '.join(sorted(partitions))})")
            part = defaults[0]
        label = f"partition {part.name!r}"
        need_cpus = (res.cpus_per_task or 1) * res.ranks_per_node
        need_mem = int(res.mem_gb * 1024) if res.mem_gb else 0
        checks = [
            ("resources.cpus_per_task", need_cpus, lambda n: n.cpus, f"{res.ranks_per_node} task(s) x {res.cpus_per_task or 1} CPUs = {need_cpus} CPUs per node", "CPUs"),
            ("resources.mem_gb", need_mem, lambda n: n.memory_mb, f"{res.mem_gb} GB per node", "MB of memory"),
            ("resources.gpus_per_node", res.gpus_per_node, lambda n: n.gpus, f"{res.gpus_per_node} GPUs per node", "GPUs"),
        ]
        for key, need, have, asked, unit in checks:
            best = max((have(n) for n in part.nodes), default=0)
            if need > best:
                raise where.error(key, f"asks for {asked}; the largest node of {label} has {best} {unit}")
        if res.constraint and re.fullmatch(r"[\w.-]+", res.constraint):
            # A single feature; expressions (a|b, a&b, [a*2]) are left to sbatch.
            if not any(res.constraint in n.features for n in part.nodes):
                features = sorted(set().union(*(n.features for n in part.nodes))) or ["none"]
                raise where.error("resources.constraint", f"no node of {label} has feature {res.constraint!r} (features: {', '.join(features)})")
        fitting = [n for n in part.nodes if n.cpus >= need_cpus and n.memory_mb >= need_mem and n.gpus >= res.gpus_per_node
                   and (not res.constraint or not re.fullmatch(r"[\w.-]+", res.constraint) or res.constraint in n.features)]
        if res.nodes > len(fitting):
            raise where.error("resources.nodes", f"asks for {res.nodes} node(s); {label} has {len(fitting)} that fit the request "
                                                 f"(of {len(part.nodes)})")
        if part.time_limit_min is not None and res.time_limit_min > part.time_limit_min:
            raise where.error("resources.time_limit_min", f"{res.time_limit_min} min exceeds the limit of {label}, {part.time_limit_min} min "
                                                          f"(longer runs requeue and resume: a shorter limit is fine)")

    def _check_data(self, request: LaunchRequest) -> None:
        """The dataset's manifest must be readable now; experiments.check_shards has compared
        its shard count with ranks x workers wherever it could read it."""
        resolved = request.experiment
        if resolved.uses_demo_data:
            return  # generated at launch, then checked
        data = resolved.run.data
        options = dict(data.storage_options)
        if data.url.startswith("s3://"):
            options["config_kwargs"] = {"connect_timeout": 5, "read_timeout": 10, "retries": {"max_attempts": 2}}
        try:
            from mae_core.data.manifest import read_manifest

            read_manifest(data.url, "train", storage_options=options)
        except Exception as err:  # noqa: BLE001 — whatever stops us reading it will stop the job too
            raise resolved.locator.error("data.url", f"cannot read the training manifest at {data.url}: {scrub_text(str(err))}") from None

    # -- dry run / submit -----------------------------------------------------------------------------
    def dry_run(self, request: LaunchRequest) -> str:
        folder = job_folder(request)
        res = request.resources
        lines = [
            f"# slurm backend (submitit): {res.describe()}, one task per {'GPU' if res.gpus_per_node else 'rank'}, "
            f"{res.world_size} rank(s) in all",
            f"# writes {folder}/{SPEC_NAME} (below) and submitit's pickled task, then runs: sbatch {folder}/<job id>_submission.sh",
            "# each task sets RANK/LOCAL_RANK/WORLD_SIZE from SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS, MASTER_ADDR = the first node,",
            f"# MASTER_PORT = {MASTER_PORT_BASE} + job id % {MASTER_PORT_SPAN}; requeues at most {request.experiment.spec.slurm.max_requeues} times",
            f"# sbatch passes on the submitting environment (run in {os.getcwd()}); each task adds:",
            *(f"#   {k}={shell_quote(v)}" for k, v in passed_environment(task_environment(request)).items()),
            f"# output: {folder}/<job id>_<task>_log.out (task 0: `maectl logs`)",
            "# --- sbatch script ---",
            scrub_text(sbatch_script(request)).rstrip(),
            f"# --- {folder}/{SPEC_NAME} ---",
            scrub_text(dump_spec(request.spec)).rstrip(),
        ]
        return "\n".join(lines) + "\n"

    def submit(self, request: LaunchRequest) -> Submitted:
        folder = job_folder(request)
        spec_path = f"{folder}/{SPEC_NAME}"
        write_spec(Path(spec_path), request.spec)
        slurm = request.experiment.spec.slurm
        executor = _executor(folder, executor_parameters(request), slurm.max_requeues)
        job = executor.submit(SlurmTask(spec_path, task_environment(request), slurm.max_requeues))
        log_path = f"{folder}/{job.job_id}_0_log.out"  # rank 0's, which also holds the job script's output
        info = {"job_id": job.job_id, "folder": folder, "tasks": request.resources.world_size, "spec": spec_path}
        return Submitted(native_id=job.job_id, log_path=log_path, info=info, state=JobState.PENDING)

    # -- sweeps: one job array ------------------------------------------------------------------------
    def submit_array(self, requests: list[LaunchRequest]) -> list[Submitted]:
        """A sweep's points as ONE job array (`sbatch --array=0-(N-1)%N`) when they ask for the same
        allocation and none waits on another job; otherwise one job per point (the default).
        Array task i runs point i; its SLURM id is `<array id>_<i>`, which scontrol, sacct,
        scancel and `scontrol requeue` (submitit's, on the warning signal) take as one job, so
        status, logs, cancel and requeues work per point. Each task is its own SLURM job
        (its own SLURM_JOB_ID, hence MASTER_PORT, and SLURM_RESTART_COUNT)."""
        plan = array_plan(requests)
        if plan is None:
            return super().submit_array(requests)
        folder, params, max_requeues = plan
        try:
            spec_paths = []
            for request in requests:
                spec_path = f"{folder}/{request.handle}/{SPEC_NAME}"
                write_spec(Path(spec_path), request.spec)
                spec_paths.append(spec_path)
            executor = _executor(folder, params, max_requeues)
            with executor.batch():
                jobs = [executor.submit(SlurmTask(spec_path, task_environment(request), max_requeues))
                        for request, spec_path in zip(requests, spec_paths)]
        except Exception as err:  # noqa: BLE001 — one sbatch for all: every point failed to launch
            error = scrub_text(f"{type(err).__name__}: {err}")
            return [Submitted(native_id=None, log_path=None, info={"error": error}, state=JobState.FAILED) for _ in requests]
        results = []
        for request, spec_path, job in zip(requests, spec_paths, jobs):
            # submitit: --output <folder>/%A_%a_%t_log.out, job.job_id "<array id>_<i>"
            info = {"job_id": job.job_id, "folder": folder, "tasks": request.resources.world_size, "spec": spec_path,
                    "array": job.job_id.split("_")[0]}
            results.append(Submitted(native_id=job.job_id, log_path=f"{folder}/{job.job_id}_0_log.out", info=info, state=JobState.PENDING))
        return results

    def dry_run_array(self, requests: list[LaunchRequest]) -> str:
        """The one sbatch script of the array, then each point's environment and spec."""
        plan = array_plan(requests)
        if plan is None:
            return super().dry_run_array(requests)
        folder, params, max_requeues = plan
        first, n = requests[0], len(requests)
        res = first.resources
        executor = _executor(folder, params, max_requeues, render_only=True)
        executor.parameters["map_count"] = n  # what submitit's batch() sets: --array, %A_%a in the log names
        script = executor._make_submission_file_text(executor._submitit_command_str, "dry-run")
        lines = [
            f"# slurm backend (submitit): ONE job array of {n} task(s), array task i = sweep point i+1; each: {res.describe()}, "
            f"one task per {'GPU' if res.gpus_per_node else 'rank'}, {res.world_size} rank(s)",
            f"# writes {folder}/<handle>/{SPEC_NAME} per point (below) and submitit's pickled tasks, then runs: "
            f"sbatch {folder}/<array id>_submission.sh",
            "# point i's SLURM job id: <array id>_<i-1> (maectl status/logs/cancel act on one point); each array task is its own job:",
            f"# MASTER_PORT = {MASTER_PORT_BASE} + its SLURM_JOB_ID % {MASTER_PORT_SPAN}; requeues at most {max_requeues} times, each point on its own",
            f"# sbatch passes on the submitting environment (run in {os.getcwd()})",
            f"# output: {folder}/<array id>_<i-1>_<task>_log.out (task 0: `maectl logs`)",
            "# --- sbatch script ---",
            scrub_text(script).rstrip(),
        ]
        for i, request in enumerate(requests):
            label = request.spec.get("sweep", {}).get("label") or request.handle
            lines += [
                f"# === {i + 1}/{n}: {label} (array task {i}) ===",
                "# each task adds:",
                *(f"#   {k}={shell_quote(v)}" for k, v in passed_environment(task_environment(request)).items()),
                f"# --- {folder}/{request.handle}/{SPEC_NAME} ---",
                scrub_text(dump_spec(request.spec)).rstrip(),
            ]
        return "\n".join(lines) + "\n"

    # -- status / logs / cancel -----------------------------------------------------------------------
    def status(self, record) -> Status:
        status = native_status(record.native_id)
        if status.state == JobState.FAILED and record.cancel_requested:
            status = Status(JobState.CANCELLED, status.exit_code, status.message, status.finished_at)
        if status.state in (JobState.FAILED, JobState.CANCELLED):
            self._end_mlflow_run(record, "KILLED" if status.state == JobState.CANCELLED else "FAILED")
        return status

    @staticmethod
    def _end_mlflow_run(record, outcome: str) -> None:
        """A task that SLURM kills (cancel, OOM, node failure, SIGKILL after KillWait) cannot close
        its MLflow run; the first status check that sees the job's end does. Idempotent."""
        spec_path = record.info.get("spec")
        if not record.tracking_uri or not spec_path or not os.path.exists(spec_path):
            return
        try:
            from ..runner import load_spec
            from ..tracking import end_run_if_running

            spec = load_spec(spec_path)
            # Killed by a cancel, rank 0 may have seen its DataLoader workers die first and closed the run FAILED.
            replace = ("RUNNING", "FAILED") if outcome == "KILLED" else ("RUNNING",)
            end_run_if_running(spec, spec["resolved"]["output_dir"], outcome, replace=replace)
        except Exception as err:  # noqa: BLE001 — the job's state matters more than its run's
            print(f"maectl: could not mark the MLflow run {outcome}: {scrub_text(str(err))}", file=sys.stderr)

    def logs(self, record, follow: bool = False) -> Iterator[str]:
        if not record.log_path:
            return  # the launch failed before sbatch gave an id
        path = Path(record.log_path)
        status_every_s, next_status = 2.0, 0.0  # scontrol is cheap, but not at 4 calls a second

        def active() -> bool:
            nonlocal next_status
            if time.monotonic() < next_status:
                return True
            next_status = time.monotonic() + status_every_s
            return not self.status(record).state.terminal

        # A requeued job appends its next run to the same file: keep following through REQUEUED.
        yield from follow_log(path, follow, active)

    def cancel(self, record) -> None:
        result = subprocess.run(["scancel", str(record.native_id)], capture_output=True, text=True, timeout=60)
        if result.returncode != 0 and "Invalid job id" not in result.stderr:
            raise RuntimeError(f"scancel {record.native_id} failed: {result.stderr.strip()}")
        deadline = time.monotonic() + 30  # SLURM marks the job CANCELLED at once; wait only for that
        while time.monotonic() < deadline and not native_status(record.native_id).state.terminal:
            time.sleep(0.5)

