"""The local backend: the job runs on this machine, detached from the `maectl` that started it.

One rank runs `python -m orchestrator.runner SPEC`; N ranks run it under torch.distributed.run
(gloo on CPU, NCCL on GPUs). Either way the command runs under `supervise`, in its own process
group (session), with its output in <job_dir>/output.log; `supervise` records the exit status in
<job_dir>/exit.json. Cancel = SIGTERM to the group, then SIGKILL after a grace period.

Dependencies (pipelines: a fine-tune after its pretraining): the supervised command is then
`python -m orchestrator.backends.local after ... -- <runner command>`, a small waiter that polls
the exit files of the jobs it follows and, once all of them completed OK, replaces itself
(exec) with the runner; if one of them failed or was cancelled it exits with
ExitCode.DEPENDENCY_FAILED and the job ends CANCELLED, never run. While it waits, a marker file in
the job folder makes `status` say PENDING. Nothing runs on this machine but the waiter (a
sleeping Python process) until then, and `cancel` works on a waiting job as on a running one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from mae_core.exitcodes import ExitCode

from .. import checks
from ..experiments import HANDLE_PLACEHOLDER
from ..plan import LaunchPlan, write_files
from .base import Backend, LaunchRequest, Status, Submitted, exit_meaning, follow_log
from .states import JobState

LOG_FILE = "output.log"
EXIT_FILE = "exit.json"
WAITING_FILE = "waiting"  # present while the job waits for the jobs it follows
CANCEL_GRACE_S = 20.0
DEPENDENCY_POLL_S = 2.0


def runner_command(spec_path: str, ranks: int) -> list[str]:
    if ranks == 1:
        return [sys.executable, "-m", "orchestrator.runner", spec_path]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc-per-node={ranks}",
            "-m", "orchestrator.runner", spec_path]


def _process_start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (Linux), None if it is gone or a zombie.
    Stored beside the pid so that a recycled pid is never mistaken for the job."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


class LocalBackend(Backend):
    name = "local"
    supports_dependencies = True

    def check(self, request: LaunchRequest) -> None:
        res = request.resources
        resolved = request.experiment
        where = resolved.locator
        if res.nodes != 1:
            raise where.error("resources.nodes", f"the local backend runs on one machine, got {res.nodes} (override resources.nodes=1)")
        if res.gpus_per_node:
            import torch

            available = torch.cuda.device_count()
            if res.gpus_per_node > available:
                raise where.error("resources.gpus_per_node", f"asks for {res.gpus_per_node} GPUs, this machine has {available} "
                                                                          f"(override resources.gpus_per_node={available})")
        if request.handle == HANDLE_PLACEHOLDER:
            return  # a dry-run shows the plan without looking at the data (as every backend's does)
        # The job runs here: what it reads and writes must be here, before anything is recorded.
        checks.check_local_data(resolved)
        checks.check_location(resolved, "output_dir", resolved.run.output_dir, nodes=1, probe=True)

    # -- the plan ----------------------------------------------------------------------------------
    def _environment(self, request: LaunchRequest) -> dict[str, str]:
        env = {"PYTHONUNBUFFERED": "1", "MAECTL_JOB": request.handle}
        if request.resources.cpus_per_task:
            env["OMP_NUM_THREADS"] = str(request.resources.cpus_per_task)
        return {**env, **request.env}

    def _command(self, request: LaunchRequest) -> list[str]:
        command = runner_command(str(request.spec_path), request.resources.ranks_per_node)
        if request.depends_on:
            waits = []
            for dep in request.depends_on:
                # pid + start time: a dependency whose supervisor vanished without an exit file
                # (SIGKILL, a reboot) is a failed one, not one to wait for forever.
                waits += ["--wait", dep.handle, str(Path(dep.job_dir) / EXIT_FILE), str(dep.info.get("pid", "<pid>")),
                          str(dep.info.get("start_ticks", "<start_ticks>"))]
            command = [sys.executable, "-m", "orchestrator.backends.local", "after", "--marker", str(request.job_dir / WAITING_FILE),
                       *waits, "--", *command]
        return [sys.executable, "-m", "orchestrator.backends.supervise", str(request.job_dir / EXIT_FILE),
                "--spec", str(request.spec_path), "--", *command]

    def plan(self, request: LaunchRequest) -> LaunchPlan:
        ranks = request.resources.ranks_per_node
        after = tuple(dep.handle for dep in request.depends_on)
        return LaunchPlan(
            backend=self.name, handle=request.handle,
            summary=(f"{ranks} rank(s) on this machine, detached (its own session; exit status recorded by the supervisor)",),
            files={str(request.spec_path): request.spec.dump()},
            env=self._environment(request), command=tuple(self._command(request)), cwd=os.getcwd(),
            native={"ranks": ranks, "exit_file": str(request.job_dir / EXIT_FILE),
                    "waiting_marker": str(request.job_dir / WAITING_FILE) if after else None},
            log=str(request.job_dir / LOG_FILE), spec_path=str(request.spec_path), depends_on=after, label=request.label,
        )

    def launch(self, plan: LaunchPlan) -> Submitted:
        write_files(plan)
        Path(plan.native["exit_file"]).unlink(missing_ok=True)
        if plan.native["waiting_marker"]:
            Path(plan.native["waiting_marker"]).touch()  # before the waiter starts: `status` must never say running
        with open(plan.log, "ab") as log:
            process = subprocess.Popen(
                list(plan.command), cwd=plan.cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **plan.env}, start_new_session=True,
            )
        info = {"pid": process.pid, "start_ticks": _process_start_ticks(process.pid)}
        if plan.depends_on:
            info["after"] = list(plan.depends_on)
            return Submitted(native_id=str(process.pid), log_path=plan.log, info=info, state=JobState.PENDING)
        return Submitted(native_id=str(process.pid), log_path=plan.log, info=info, state=JobState.RUNNING)

    # -- status ----------------------------------------------------------------------------------
    def _alive(self, record) -> bool:
        pid, ticks = record.info.get("pid"), record.info.get("start_ticks")
        if not pid:
            return False
        now = _process_start_ticks(pid)
        return now is not None and (ticks is None or now == ticks)

    def status(self, record) -> Status:
        exit_file = Path(record.job_dir) / EXIT_FILE
        if exit_file.exists():
            recorded = json.loads(exit_file.read_text())
            code, ended = recorded["returncode"], recorded.get("finished_at")
            code = 128 - code if code < 0 else code
            if code == 0 and record.cancel_requested:
                # A cancelled run stops cleanly on SIGTERM (checkpoint, exit 0): still cancelled.
                return Status(JobState.CANCELLED, 0, "stopped on cancel after a checkpoint", ended)
            if code == 0:
                return Status(JobState.COMPLETED, 0, "done", ended)
            if code == ExitCode.DEPENDENCY_FAILED and record.info.get("after"):
                return Status(JobState.CANCELLED, code, f"not run: {', '.join(record.info['after'])} did not complete", ended)
            state = JobState.CANCELLED if record.cancel_requested else JobState.FAILED
            return Status(state, code, exit_meaning(code), ended)
        if self._alive(record):
            if (Path(record.job_dir) / WAITING_FILE).exists():
                return Status(JobState.PENDING, None, f"waiting for {', '.join(record.info.get('after') or ['the job it follows'])} to complete")
            return Status(JobState.RUNNING)
        if record.cancel_requested:
            return Status(JobState.CANCELLED, None, "killed")
        return Status(JobState.FAILED, None, "the job's processes ended without recording an exit status (killed?)")

    # -- logs ------------------------------------------------------------------------------------
    def logs(self, record, follow: bool = False) -> Iterator[str]:
        path = Path(record.log_path or Path(record.job_dir) / LOG_FILE)
        # A follow-up waiting for its pretraining is PENDING: keep following it too.
        yield from follow_log(path, follow, lambda: not self.status(record).state.terminal, wait_s=0.2)

    # -- cancel ----------------------------------------------------------------------------------
    def cancel(self, record) -> None:
        if not self._alive(record):
            return
        pgid = record.info["pid"]  # start_new_session: the supervisor leads its own group
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + CANCEL_GRACE_S
        while time.monotonic() < deadline:
            if not self._group_alive(pgid):
                return
            time.sleep(0.2)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        # Zombies still count for killpg(0); look for a member that is really running.
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
        return False


# -- the dependency waiter: python -m orchestrator.backends.local after ... -- COMMAND ------------
def _dependency_outcome(exit_file: str, pid: str, ticks: str) -> int | None:
    """The exit code of a job this one follows; None while it runs. A supervisor that is gone
    without writing its exit file counts as a failure (-9)."""
    def recorded() -> int | None:
        try:
            with open(exit_file) as f:
                return int(json.load(f)["returncode"])
        except (OSError, ValueError, KeyError):
            return None

    code = recorded()
    if code is not None:
        return code
    if not pid.isdigit():
        return None
    now = _process_start_ticks(int(pid))
    if now is not None and (not ticks.isdigit() or now == int(ticks)):
        return None
    time.sleep(0.5)  # the supervisor writes its exit file just before it exits
    code = recorded()
    return code if code is not None else -9


def wait_then_exec(argv: list[str]) -> int:
    """`after --marker FILE --wait HANDLE EXIT_FILE PID TICKS [...] -- COMMAND...`"""
    if "--" not in argv:
        print("usage: python -m orchestrator.backends.local after --marker FILE --wait HANDLE EXIT_FILE PID TICKS ... -- COMMAND...",
              file=sys.stderr)
        return ExitCode.BAD_INPUT
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1 :]
    marker, waits = None, []
    i = 0
    while i < len(options):
        if options[i] == "--marker":
            marker, i = options[i + 1], i + 2
        elif options[i] == "--wait":
            waits.append(tuple(options[i + 1 : i + 5]))
            i += 5
        else:
            print(f"unknown option {options[i]}", file=sys.stderr)
            return ExitCode.BAD_INPUT
    names = ", ".join(w[0] for w in waits)
    print(f"[maectl] waiting for {names} to complete", flush=True)
    pending = list(waits)
    while pending:
        for wait in list(pending):
            handle, exit_file, pid, ticks = wait
            code = _dependency_outcome(exit_file, pid, ticks)
            if code is None:
                continue
            if code != 0:
                print(f"[maectl] not run: {handle} did not complete ({exit_meaning(code)})", flush=True)
                return ExitCode.DEPENDENCY_FAILED
            pending.remove(wait)
        if pending:
            time.sleep(DEPENDENCY_POLL_S)
    print(f"[maectl] {names} completed: starting", flush=True)
    if marker:
        Path(marker).unlink(missing_ok=True)
    os.execvp(command[0], command)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "after":
        print("usage: python -m orchestrator.backends.local after ...", file=sys.stderr)
        sys.exit(ExitCode.BAD_INPUT)
    sys.exit(wait_then_exec(sys.argv[2:]))
