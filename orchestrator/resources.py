"""What a job asks of a cluster, in one vocabulary that every backend maps to its own names
(sbatch options for SLURM, a ScalingConfig for Ray, a process count for the local backend)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mae_core.structured import ConfigError, bounded  # plain data: no torch


def config_error(key: str, message: str) -> Exception:
    return ConfigError(key, message)


@dataclass(kw_only=True)
class Resources:
    nodes: int = bounded(1, ge=1, le=100_000)
    gpus_per_node: int = bounded(0, ge=0, le=64)
    # Ranks per node. One per GPU on GPU nodes (the default there); on CPU-only machines
    # (the local backend, tests) it says how many processes to start.
    tasks_per_node: int | None = bounded(None, ge=1, le=1024)
    cpus_per_task: int | None = bounded(None, ge=1, le=4096)
    mem_gb: float | None = bounded(None, gt=0, le=1_000_000)
    time_limit_min: int | None = bounded(None, ge=1, le=525_600 * 10)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    # Anything else for sbatch, by its long option name: {exclusive: true, gres-flags: enforce-binding}.
    sbatch_options: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("nodes", "tasks_per_node", "cpus_per_task", "time_limit_min"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise config_error(name, f"must be >= 1, got {value}")
        if self.gpus_per_node < 0:
            raise config_error("gpus_per_node", f"must be >= 0, got {self.gpus_per_node}")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise config_error("mem_gb", f"must be > 0, got {self.mem_gb}")
        if self.gpus_per_node and self.tasks_per_node not in (None, self.gpus_per_node):
            raise config_error("tasks_per_node", f"is {self.tasks_per_node} but gpus_per_node is {self.gpus_per_node}: maectl runs one task per GPU")
        for key, value in self.sbatch_options.items():
            if not isinstance(key, str) or not key or key.startswith("-") or not isinstance(value, (str, int, float, bool)):
                raise config_error(f"sbatch_options.{key}", f"expected a string, number or true/false, got {value!r}")

    @property
    def ranks_per_node(self) -> int:
        return self.tasks_per_node or self.gpus_per_node or 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def describe(self) -> str:
        devices = f"{self.gpus_per_node} GPU" + ("s" if self.gpus_per_node != 1 else "") if self.gpus_per_node else f"{self.ranks_per_node} CPU process" + ("es" if self.ranks_per_node != 1 else "")
        text = f"{self.nodes} node{'s' if self.nodes != 1 else ''} x {devices}"
        if self.time_limit_min:
            text += f", {self.time_limit_min} min"
        return text
