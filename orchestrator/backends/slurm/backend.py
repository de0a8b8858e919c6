"""The SLURM backend, through submitit: one sbatch job, one task (rank) per GPU.

    plan:     the job spec for <job folder>/job.yaml, submitit's executor parameters and the
              sbatch script submitit renders from them (`--dry-run` prints that plan): srun with
              the CPUs per task, the interpreter (`slurm.python`) or a container (pyxis's
              --container-image, or `apptainer exec`), PYTHONPATH on the code snapshot
    launch:   writes the spec, checks that submitit would hand sbatch exactly the planned script,
              copies orchestrator/ and mae_core/ into <job folder>/code (the snapshot every run
              of the job imports, requeues included), pickles a `SlurmTask` (task.py) and runs `sbatch`
    per task: task.py — SlurmTask turns submitit's JobEnvironment into the torch.distributed
              variables and runs `orchestrator.runner.run_job` in the task's own process

The job folder (submitit's: scripts, pickles, one log per task) must be on storage that the
submitting machine and every node share; it defaults to <output_dir>/slurm, and the output
folder (checkpoints, metrics, the MLflow run id) must be shared anyway. Preemption, time limits
and requeues: see task.py. Cluster queries (sinfo, scontrol, sacct): cluster.py.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from mae_core.exitcodes import ExitCode

from ... import checks
from ...experiments import HANDLE_PLACEHOLDER
from ...jobspec import SPEC_FILE
from ...plan import LaunchPlan, write_files
from ...redact import scrub_text
from ..base import Backend, LaunchRequest, Status, Submitted, failed_launch, follow_log
from ..states import JobState
from . import cluster
from .task import MASTER_PORT_BASE, MASTER_PORT_SPAN, SlurmTask

JOB_FOLDER = "slurm"  # under output_dir, unless slurm.job_folder is set
SNAPSHOT_DIR = "code"  # <job folder>/code: the packages the job imports, copied at submission
SNAPSHOT_PACKAGES = ("orchestrator", "mae_core")
CONTAINER_PYTHON = "python"  # the interpreter inside a container, unless slurm.python says otherwise
SPEC_NAME = SPEC_FILE
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


def job_folder(request: LaunchRequest) -> str:
    """Where submitit keeps this job's script, pickles and logs (one folder per job)."""
    configured = request.experiment.spec.slurm.job_folder
    if configured:
        return f"{configured.rstrip('/')}/{request.handle}"
    return f"{request.experiment.run.output_dir.rstrip('/')}/{JOB_FOLDER}"


def array_folder(request: LaunchRequest) -> str:
    """A sweep's job array folder (one for all points): <slurm.job_folder>/<sweep id>, else
    <output_root>/<experiment>/<sweep id>/slurm. Each point's spec goes to <folder>/<handle>/job.yaml."""
    sweep_id = request.spec.sweep.id
    configured = request.experiment.spec.slurm.job_folder
    if configured:
        return f"{configured.rstrip('/')}/{sweep_id}"
    return f"{request.experiment.output_root.rstrip('/')}/{request.experiment.name}/{sweep_id}/{JOB_FOLDER}"


def array_plan(requests: list[LaunchRequest]) -> tuple[str, dict, int] | None:
    """(folder, executor parameters, max requeues) of one job array for these sweep points, or
    None where they must be separate jobs: fewer than 2, not one sweep, a dependency (afterok is
    per job), different allocations or requeue bounds, or a folder the points' own checks did not cover."""
    if len(requests) < 2 or any(r.depends_on or r.spec.sweep is None for r in requests):
        return None
    first = requests[0]
    if any(r.spec.sweep.id != first.spec.sweep.id or r.experiment.name != first.experiment.name for r in requests):
        return None

    def shared(request: LaunchRequest) -> dict:
        slurm = request.experiment.spec.slurm
        # The job-specific values (name, comment, the job folder in the snapshot path) aside.
        params = {k: v for k, v in executor_parameters(request, "<folder>").items() if k not in ("job_name", "comment")}
        return {**params, "max_requeues": slurm.max_requeues, "max_restarts": slurm.max_restarts, "throttle": slurm.array_parallelism}

    params = shared(first)
    if any(shared(r) != params for r in requests[1:]):
        return None
    folder = array_folder(first)
    if "://" in folder or not os.path.isabs(folder) or (first.resources.nodes > 1 and checks.is_node_local(folder)):
        return None  # e.g. output_root on s3:// with output_dir elsewhere: separate jobs, each in its checked folder
    max_requeues = first.experiment.spec.slurm.max_requeues
    params = executor_parameters(first, folder)
    sweep_id = first.spec.sweep.id
    # At most K points at once (slurm.array_parallelism -> --array=0-(N-1)%K); default: all of them.
    throttle = min(first.experiment.spec.slurm.array_parallelism or len(requests), len(requests))
    params.update({"job_name": f"{first.experiment.name}.{sweep_id}", "comment": f"maectl {sweep_id}", "array_parallelism": throttle})
    return folder, params, max_requeues


def _mem(mem_gb: float) -> str:
    # As submitit writes it: whole GB when it can, else MB.
    return f"{int(mem_gb)}GB" if mem_gb == int(mem_gb) else f"{int(mem_gb * 1024)}MB"


def snapshot_folder(folder: str) -> str:
    return f"{folder}/{SNAPSHOT_DIR}"


def _covered(path: str, mounts: list[str]) -> bool:
    sources = [m.split(":")[0].rstrip("/") for m in mounts]
    return any(path == src or path.startswith(src + "/") for src in sources)


def container_mounts(request: LaunchRequest, folder: str) -> list[str]:
    """The container's mounts: slurm.container.mounts, plus (at the same path) the job folder,
    which holds the code snapshot and submitit's pickles, and a local output folder."""
    mounts = list(request.experiment.spec.slurm.container.mounts)
    output_dir = request.experiment.run.output_dir
    for path in (folder, output_dir if "://" not in output_dir else None):
        if path and not _covered(path.rstrip("/"), mounts):
            mounts.append(path.rstrip("/"))
    return mounts


def interpreter(request: LaunchRequest, folder: str) -> str | None:
    """The shell command that starts Python on every task (submitit's `python`); None: the
    submitting interpreter (sys.executable), submitit's default."""
    slurm = request.experiment.spec.slurm
    container = slurm.container
    if container.image is None:
        return slurm.python  # a shell command, e.g. /shared/envs/maectl/bin/python
    python = slurm.python or CONTAINER_PYTHON
    if container.runtime == "apptainer":
        gpus = ["--nv"] if request.resources.gpus_per_node else []  # the host's NVIDIA driver inside
        return shlex.join(["apptainer", "exec", *gpus, "--bind", ",".join(container_mounts(request, folder)), container.image]) + f" {python}"
    return python  # pyxis: srun starts the task in the image (srun_arguments)


def srun_arguments(request: LaunchRequest, folder: str) -> list[str]:
    """srun's own options: the CPUs per task (srun of Slurm 22.05-23.02 does not take them from
    the allocation, and binds each task to one CPU), pyxis's container, then slurm.srun_args."""
    res, slurm = request.resources, request.experiment.spec.slurm
    args = [f"--cpus-per-task={res.cpus_per_task}"] if res.cpus_per_task else []
    if slurm.container.image is not None and slurm.container.runtime == "pyxis":
        args += [f"--container-image={slurm.container.image}", f"--container-mounts={','.join(container_mounts(request, folder))}"]
    return [*args, *slurm.srun_args]


def setup_lines(request: LaunchRequest, folder: str) -> list[str]:
    """slurm.setup, then the code snapshot first on the import path. PYTHONSAFEPATH: `python -m`
    would otherwise put the working directory (often the live checkout) ahead of it."""
    snapshot = shlex.quote(snapshot_folder(folder))
    return [*request.experiment.spec.slurm.setup, f"export PYTHONPATH={snapshot}${{PYTHONPATH:+:$PYTHONPATH}}", "export PYTHONSAFEPATH=1"]


def teardown_lines(request: LaunchRequest, folder: str) -> list[str]:
    """After srun, in the batch script: when srun failed, end the job's MLflow run if its tasks
    died without closing it (teardown.py); the script exits with srun's status either way."""
    python = interpreter(request, folder) or shlex.quote(sys.executable)
    container = request.experiment.spec.slurm.container
    if container.image is not None and container.runtime == "pyxis":  # the batch host may have no Python of ours
        python = shlex.join(["srun", "--nodes=1", "--ntasks=1", f"--container-image={container.image}",
                             f"--container-mounts={','.join(container_mounts(request, folder))}"]) + f" {python}"
    return ["code=$?  # srun's exit status",
            f'[ "$code" -eq 0 ] || {python} -m orchestrator.backends.slurm.teardown {shlex.quote(folder)} "$code"',
            'exit "$code"']


def take_snapshot(snapshot: dict) -> str:
    """Copy the packages the job imports into <job folder>/code (at submission, before sbatch),
    with a note of the commit they came from."""
    from ...locations import PROJECT_ROOT

    target = Path(snapshot["folder"])
    for package in snapshot["packages"]:
        shutil.copytree(PROJECT_ROOT / package, target / package, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (target / "SNAPSHOT").write_text(f"{snapshot['source']}\n")
    return str(target)


def executor_parameters(request: LaunchRequest, folder: str | None = None) -> dict:
    """submitit's SlurmExecutor parameters (its native names) for this request, whose submitit
    folder is `folder` (default: the job's own, job_folder())."""
    res, slurm = request.resources, request.experiment.spec.slurm
    folder = folder or job_folder(request)
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
        "setup": setup_lines(request, folder),
        "teardown": teardown_lines(request, folder),
    }
    optional = {
        "partition": res.partition, "account": res.account, "qos": res.qos, "constraint": res.constraint,
        "cpus_per_task": res.cpus_per_task, "gpus_per_node": res.gpus_per_node or None,
        "mem": _mem(res.mem_gb) if res.mem_gb else None,
        "srun_args": srun_arguments(request, folder) or None,
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


def _executor(folder: str, params: dict, max_requeues: int, *, python: str | None = None, render_only: bool = False):
    import submitit

    cls = submitit.SlurmExecutor
    if render_only:
        class Renderer(submitit.SlurmExecutor):
            """SlurmExecutor refuses to exist where `srun` is missing; a plan (on a laptop) only renders."""

            @classmethod
            def affinity(cls) -> int:
                return 1

        cls = Renderer
    executor = cls(folder=folder, max_num_timeout=max_requeues, python=python)
    executor.update_parameters(**params)
    return executor


def sbatch_text(executor, array_size: int | None = None) -> str:
    """The sbatch script `executor` hands to sbatch (for a job array of `array_size` tasks, as its
    batch() makes one). The ONE place that uses submitit's private API: the script is rendered by
    submitit itself, so that the plan shows exactly what it will submit."""
    if array_size is None:
        return executor._make_submission_file_text(executor._submitit_command_str, "plan")
    saved = executor.parameters.get("map_count")
    executor.parameters["map_count"] = array_size  # what submitit's batch() sets: --array, %A_%a in the log names
    try:
        return executor._make_submission_file_text(executor._submitit_command_str, "plan")
    finally:
        if saved is None:
            executor.parameters.pop("map_count", None)
        else:
            executor.parameters["map_count"] = saved


def _same_script(executor, plan: LaunchPlan, array_size: int | None = None) -> None:
    """What is shown is what runs: refuse to submit if submitit would now write another script."""
    actual = sbatch_text(executor, array_size)
    if actual != plan.script:
        raise RuntimeError("the sbatch script submitit would submit differs from the plan (environment changed between "
                           "planning and launch?); nothing submitted")


def task_environment(request: LaunchRequest) -> dict[str, str]:
    """Set on every task on top of what sbatch passes on (the submitting environment)."""
    env = {"PYTHONUNBUFFERED": "1", "MAECTL_JOB": request.handle}
    if request.resources.cpus_per_task:
        env["OMP_NUM_THREADS"] = str(request.resources.cpus_per_task)
    return {**env, **request.env}


def _tasks(plan: LaunchPlan) -> int:
    params = plan.native["executor"]
    return params["nodes"] * params["ntasks_per_node"]


def _task(plan: LaunchPlan) -> SlurmTask:
    return SlurmTask(plan.spec_path, dict(plan.env), plan.native["max_requeues"], max_restarts=plan.native["max_restarts"])


def _native(request: LaunchRequest, folder: str, params: dict) -> dict:
    """The plan's SLURM parameters: what launch() hands submitit, and what the task is told."""
    slurm = request.experiment.spec.slurm
    return {"folder": folder, "max_requeues": slurm.max_requeues, "max_restarts": slurm.max_restarts,
            "python": interpreter(request, folder),
            "snapshot": {"folder": snapshot_folder(folder), "packages": list(SNAPSHOT_PACKAGES), "source": _source(request)},
            "executor": params}


def _restarts_line(slurm) -> str:
    return (f"an application failure (exit {int(ExitCode.FAILED)}) on any rank requeues the job from its latest checkpoint, at most "
            f"{slurm.max_restarts} times (slurm.max_restarts); a bad config or input (exit {int(ExitCode.BAD_INPUT)}) never")


def _source(request: LaunchRequest) -> str:
    submitted = request.spec.submitted
    dirty = " with uncommitted changes" if submitted.git_dirty else ""
    return f"commit {submitted.git_commit or 'unknown'}{dirty}, maectl {submitted.maectl_version}"


def _code_line(folder: str, request: LaunchRequest) -> str:
    return (f"code: {', '.join(p + '/' for p in SNAPSHOT_PACKAGES)} copied to {snapshot_folder(folder)} at submission "
            f"({_source(request)}; MLflow's git_commit tag), first on PYTHONPATH: requeues run the same code")


def _runtime_line(request: LaunchRequest, folder: str) -> str:
    container = request.experiment.spec.slurm.container
    if container.image is None:
        return f"interpreter: {interpreter(request, folder) or sys.executable} (slurm.python)"
    how = "srun --container-image (pyxis)" if container.runtime == "pyxis" else "apptainer exec"
    return f"container: {container.image} through {how}, mounts {', '.join(container_mounts(request, folder))}"


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
        self._check_locations(request, probe=not dry_run)
        if dry_run:
            return  # a dry-run shows the plan without contacting SLURM or the data (it works on a laptop)
        self._check_cluster(request)
        checks.check_manifest(request.experiment)

    def _check_locations(self, request: LaunchRequest, probe: bool = True) -> None:
        """The job folder and output folder: reachable from every node, and (`probe`) writable."""
        resolved, res = request.experiment, request.resources
        folder_key = "slurm.job_folder" if resolved.spec.slurm.job_folder else "output_dir"
        folder = job_folder(request)
        if "://" in folder:
            raise resolved.locator.error("slurm.job_folder", f"the job folder must be a shared POSIX path (sbatch reads the script from it), "
                                                             f"not {folder.split('://')[0]}://; set slurm.job_folder when output_dir is on object storage")
        for key, path in (("output_dir", resolved.run.output_dir), (folder_key, folder)):
            checks.check_location(resolved, key, path, nodes=res.nodes, probe=probe)

    def _check_cluster(self, request: LaunchRequest) -> None:
        where, res = request.experiment.locator, request.resources
        if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
            raise where.error("backend", "no SLURM client here (sinfo/sbatch not on PATH): submit from a login node")
        partitions = cluster.query_partitions()
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

    # -- the plan ---------------------------------------------------------------------------------------
    def plan(self, request: LaunchRequest) -> LaunchPlan:
        folder = job_folder(request)
        params = executor_parameters(request, folder)
        slurm = request.experiment.spec.slurm
        spec_path = f"{folder}/{SPEC_NAME}"
        res = request.resources
        native = _native(request, folder, params)
        return LaunchPlan(
            backend=self.name, handle=request.handle,
            summary=(f"submitit, {res.describe()}, one task per {'GPU' if res.gpus_per_node else 'rank'}, {res.world_size} rank(s) in all",
                     f"sbatch {folder}/<job id>_submission.sh (the script below); submitit pickles the task beside it",
                     "each task sets RANK/LOCAL_RANK/WORLD_SIZE from SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS, MASTER_ADDR = the first node,",
                     f"MASTER_PORT = {MASTER_PORT_BASE} + job id % {MASTER_PORT_SPAN}; requeues at most {slurm.max_requeues} times "
                     f"(preemption, time limit, scontrol requeue)",
                     _restarts_line(slurm), _code_line(folder, request), _runtime_line(request, folder)),
            files={spec_path: request.spec.dump()}, env=task_environment(request), cwd=os.getcwd(),
            script=sbatch_text(_executor(folder, params, slurm.max_requeues, python=native["python"], render_only=True)),
            native=native, log=f"{folder}/<job id>_0_log.out", spec_path=spec_path,
            depends_on=tuple(d.handle for d in request.depends_on), label=request.label,
        )

    def plan_many(self, requests: list[LaunchRequest]) -> list[LaunchPlan]:
        """A sweep's points as ONE job array (`sbatch --array=0-(N-1)%N`) when they ask for the same
        allocation and none waits on another job; otherwise one job per point (the default).
        Array task i runs point i; its SLURM id is `<array id>_<i>`, which scontrol, sacct,
        scancel and `scontrol requeue` (submitit's, on the warning signal) take as one job, so
        status, logs, cancel and requeues work per point. Each task is its own SLURM job
        (its own SLURM_JOB_ID, hence MASTER_PORT, and SLURM_RESTART_COUNT)."""
        grouped = array_plan(requests)
        if grouped is None:
            return super().plan_many(requests)
        folder, params, max_requeues = grouped
        first = requests[0]
        n, res, slurm = len(requests), first.resources, first.experiment.spec.slurm
        native = _native(first, folder, params)
        script = sbatch_text(_executor(folder, params, max_requeues, python=native["python"], render_only=True), array_size=n)
        throttle = params["array_parallelism"]
        summary = (f"submitit, ONE job array of {n} task(s), array task i = sweep point i+1, at most {throttle} at once "
                   f"(slurm.array_parallelism); each: {res.describe()}, one task per {'GPU' if res.gpus_per_node else 'rank'}, "
                   f"{res.world_size} rank(s)",
                   f"sbatch {folder}/<array id>_submission.sh (the script below); submitit pickles each point's task beside it",
                   "point i's SLURM job id: <array id>_<i-1> (maectl status/logs/cancel act on one point); each array task is its own job:",
                   f"MASTER_PORT = {MASTER_PORT_BASE} + its SLURM_JOB_ID % {MASTER_PORT_SPAN}; requeues at most {max_requeues} times, "
                   f"each point on its own", _restarts_line(slurm), _code_line(folder, first), _runtime_line(first, folder))
        plans = []
        for i, request in enumerate(requests):
            spec_path = f"{folder}/{request.handle}/{SPEC_NAME}"
            plans.append(LaunchPlan(
                backend=self.name, handle=request.handle, summary=summary, files={spec_path: request.spec.dump()},
                env=task_environment(request), cwd=os.getcwd(), script=script,
                native={**native, "array": {"size": n, "index": i}},
                log=f"{folder}/<array id>_{i}_0_log.out", spec_path=spec_path, group=folder, label=request.label,
            ))
        return plans

    # -- launch ---------------------------------------------------------------------------------------
    def launch(self, plan: LaunchPlan) -> Submitted:
        folder, max_requeues = plan.native["folder"], plan.native["max_requeues"]
        executor = _executor(folder, dict(plan.native["executor"]), max_requeues, python=plan.native["python"])
        _same_script(executor, plan)
        write_files(plan)
        take_snapshot(plan.native["snapshot"])
        job = executor.submit(_task(plan))
        log_path = f"{folder}/{job.job_id}_0_log.out"  # rank 0's, which also holds the job script's own output
        info = {"job_id": job.job_id, "folder": folder, "tasks": _tasks(plan), "spec": plan.spec_path}
        return Submitted(native_id=job.job_id, log_path=log_path, info=info, state=JobState.PENDING)

    def launch_many(self, plans: list[LaunchPlan]) -> list[Submitted]:
        if len(plans) < 2 or not all(p.group and p.group == plans[0].group and "array" in p.native for p in plans):
            return super().launch_many(plans)
        first = plans[0]
        folder, max_requeues = first.native["folder"], first.native["max_requeues"]
        try:
            executor = _executor(folder, dict(first.native["executor"]), max_requeues, python=first.native["python"])
            _same_script(executor, first, array_size=len(plans))
            for plan in plans:
                write_files(plan)
            take_snapshot(first.native["snapshot"])  # one for the array: every point runs the same code
            with executor.batch():
                jobs = [executor.submit(_task(plan)) for plan in plans]
        except Exception as err:  # noqa: BLE001 — one sbatch for all: every point failed to launch
            return [failed_launch(err) for _ in plans]
        results = []
        for plan, job in zip(plans, jobs):
            # submitit: --output <folder>/%A_%a_%t_log.out, job.job_id "<array id>_<i>"
            info = {"job_id": job.job_id, "folder": folder, "tasks": _tasks(plan), "spec": plan.spec_path, "array": job.job_id.split("_")[0]}
            results.append(Submitted(native_id=job.job_id, log_path=f"{folder}/{job.job_id}_0_log.out", info=info, state=JobState.PENDING))
        return results

    # -- status / logs / cancel -----------------------------------------------------------------------
    def status(self, record) -> Status:
        """Asks SLURM only: a job's MLflow run is ended by the job itself or by `maectl cancel`."""
        status = cluster.native_status(record.native_id)
        if status.state == JobState.FAILED and record.cancel_requested:
            status = Status(JobState.CANCELLED, status.exit_code, status.message, status.finished_at)
        return status

    # One log per task: submitit's <job id>_<rank>_log.out (array tasks: <array id>_<i>_<rank>_log.out,
    # their native id being <array id>_<i>). Rank 0's also holds the job script's own output.
    def ranks(self, record) -> int:
        return int(record.info.get("tasks") or 1)

    def log_path(self, record, rank: int = 0) -> Path | None:
        if not record.log_path:
            return None  # the launch failed before sbatch gave an id
        if rank == 0:
            return Path(record.log_path)
        return Path(record.log_path).with_name(f"{record.native_id}_{rank}_log.out")

    def _active(self, record):
        status_every_s, next_status = 2.0, 0.0  # scontrol is cheap, but not at 4 calls a second

        def active() -> bool:
            nonlocal next_status
            if time.monotonic() < next_status:
                return True
            next_status = time.monotonic() + status_every_s
            return not self.status(record).state.terminal

        return active

    def logs(self, record, follow: bool = False, rank: int = 0) -> Iterator[str]:
        path = self.log_path(record, rank)
        if path is None:
            return
        # A requeued job appends its next run to the same file: keep following through REQUEUED.
        yield from follow_log(path, follow, self._active(record))

    def all_logs(self, record, follow: bool = False) -> Iterator[str]:
        """Every rank's log, each line prefixed `[rank N] `: rank by rank, or (follow) as written."""
        n = self.ranks(record)
        if self.log_path(record) is None:
            return
        if not follow:
            for rank in range(n):
                for chunk in follow_log(self.log_path(record, rank), False, lambda: False):
                    yield from (f"[rank {rank}] {line}" for line in chunk.splitlines(keepends=True))
            return
        active = self._active(record)
        files: dict[int, object] = {}
        pending = {rank: "" for rank in range(n)}
        try:
            while True:
                running = active()
                got = False
                for rank in range(n):
                    if rank not in files:
                        path = self.log_path(record, rank)
                        if not path.exists():
                            continue
                        files[rank] = open(path, errors="replace")
                    chunk = files[rank].read()
                    if not chunk:
                        continue
                    got = True
                    text = pending[rank] + chunk
                    *lines, pending[rank] = text.split("\n")
                    for line in lines:
                        yield f"[rank {rank}] {scrub_text(line)}\n"
                if not running and not got:
                    for rank, rest in pending.items():
                        if rest:
                            yield f"[rank {rank}] {scrub_text(rest)}\n"
                    return
                if not got:
                    time.sleep(0.25)
        finally:
            for f in files.values():
                f.close()

    def cancel(self, record) -> None:
        result = subprocess.run(["scancel", str(record.native_id)], capture_output=True, text=True, timeout=60)
        if result.returncode != 0 and "Invalid job id" not in result.stderr:
            raise RuntimeError(f"scancel {record.native_id} failed: {result.stderr.strip()}")
        deadline = time.monotonic() + 30  # SLURM marks the job CANCELLED at once; wait only for that
        while time.monotonic() < deadline and not cluster.native_status(record.native_id).state.terminal:
            time.sleep(0.5)

