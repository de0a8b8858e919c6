"""What the SLURM cluster says: partitions and nodes (sinfo), a job's state (scontrol, then
sacct once the controller has forgotten it), mapped onto maectl's JobState. Reads only."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from ..base import Status, exit_meaning
from ..states import JobState

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
        message = exit_meaning(exit_code)
    return Status(state, exit_code if state.terminal else None, message)


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


