"""The site: what one cluster (or laptop) says about itself, so that experiment files stay site-free.

One file, the first that exists of:

    $MAECTL_SITE                      a path (set it to an empty string for "no site file")
    ~/.config/maectl/site.yaml        the user's own
    <checkout>/site.yaml              beside jobs/: the checkout's defaults (dataset locations)

    backend: slurm                    # the default backend; without it maectl detects one
    output_root: /shared/maectl/out   # or s3://bucket/maectl (MAECTL_OUTPUT_ROOT still wins)
    shared_paths: [/shared]           # storage every node sees: multi-node jobs may write there
    jobs_path: [/shared/maectl/jobs]  # experiment folders searched before jobs/ (and before the
                                      # folder of the file that `extends:` them: a site folder
                                      # can shadow base/pretrain.yaml)
    datasets:                         # `data.url: dataset:imagenet` in an experiment file
      imagenet: /shared/datasets/imagenet-wds
    pass_env: [AWS_PROFILE]           # environment variables a job may receive (Ray runtime_env)
    cluster_has_maectl: false         # Ray: true = the cluster has this maectl installed (checked);
                                      # false = the job ships orchestrator/ and mae_core/ (py_modules)
    defaults:                         # any experiment keys, applied over the experiment's files
      resources: {partition: gpu, account: vision, qos: normal, constraint: h100}
      slurm: {job_folder: /shared/maectl/jobs, python: /shared/envs/maectl/bin/python}
      tracking: {uri: http://mlflow.internal:5000}

Precedence, lowest first: the experiment's `extends:` chain, the experiment file, the site's
`defaults`, the command line. Errors about a key the site set name the site file.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mae_core.structured import ConfigError, from_dict

from . import locations
from .errors import UsageError

SITE_ENV = "MAECTL_SITE"
USER_SITE = Path("~/.config/maectl/site.yaml")
DATASET_SCHEME = "dataset:"
DETECT_TIMEOUT_S = 3.0


@dataclass(kw_only=True)
class SiteConfig:
    backend: Literal["local", "slurm", "ray"] | None = None
    output_root: str | None = None
    shared_paths: list[str] = field(default_factory=list)
    jobs_path: list[str] = field(default_factory=list)
    datasets: dict[str, str] = field(default_factory=dict)
    pass_env: list[str] = field(default_factory=list)
    # The Ray cluster runs maectl from its own install (an image): the job does not ship this
    # checkout's packages, and every Ray process checks that its code is the submitter's.
    cluster_has_maectl: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for name, url in self.datasets.items():
            if not isinstance(url, str) or not url:
                raise ConfigError(f"datasets.{name}", f"expected the dataset's URL or folder, got {url!r}")
        for i, path in enumerate(self.shared_paths):
            if not (path.startswith("/") or "://" in path):
                raise ConfigError(f"shared_paths[{i}]", f"expected an absolute path or URL prefix, got {path!r}")
        if not isinstance(self.defaults, dict):
            raise ConfigError("defaults", "expected a mapping of experiment sections")
        for key in self.defaults:
            if key in ("extends", "sweep", "pipeline"):
                raise ConfigError(f"defaults.{key}", "a site sets settings, not what an experiment extends, sweeps or runs next")


@dataclass(frozen=True)
class Site:
    config: SiteConfig
    path: Path | None  # None: no site file

    @property
    def label(self) -> str:
        return f"site file {_display(self.path)}" if self.path else "no site file"

    def dataset_url(self, name: str) -> str | None:
        return self.config.datasets.get(name)

    def is_shared(self, path: str) -> bool:
        """Whether `path` lies on storage the site declares every node sees."""
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.config.shared_paths)


def _display(path: Path | None) -> str:
    if path is None:
        return "-"
    try:
        return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)
    except ValueError:
        return str(path)


def site_path() -> Path | None:
    """The site file in effect, by the search order in the module docstring."""
    if SITE_ENV in os.environ:
        raw = os.environ[SITE_ENV]
        if not raw:
            return None
        path = Path(raw).expanduser()
        if not path.is_file():
            raise UsageError(f"{SITE_ENV}={raw}: no such site file")
        return path.absolute()
    for candidate in (USER_SITE.expanduser(), locations.PROJECT_ROOT / "site.yaml"):
        if candidate.is_file():
            return candidate.absolute()
    return None


@functools.lru_cache(maxsize=8)
def _load(path: Path | None, mtime: float) -> Site:
    if path is None:
        return Site(SiteConfig(), None)
    from .experiments import read_yaml  # the same strict reader as experiment files

    data = read_yaml(path)
    try:
        config = from_dict(SiteConfig, data)
    except ConfigError as err:
        raise UsageError(f"{_display(path)}: {err}") from None
    return Site(config, path)


def active() -> Site:
    path = site_path()
    return _load(path, path.stat().st_mtime if path else 0.0)


# -- the default backend -------------------------------------------------------------------------
def detect_backend() -> tuple[str, str]:
    """(backend, why) where neither the command line, the experiment nor the site says: SLURM where
    `sinfo` answers, Ray where RAY_ADDRESS is set, else this machine."""
    if shutil.which("sinfo"):
        try:
            result = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=DETECT_TIMEOUT_S)
            if result.returncode == 0 and result.stdout.strip():
                return "slurm", "detected: sinfo answers"
        except (OSError, subprocess.TimeoutExpired):
            pass
    if os.environ.get("RAY_ADDRESS"):
        return "ray", "detected: RAY_ADDRESS is set"
    return "local", "detected: no SLURM or Ray here"


# -- `maectl site init` --------------------------------------------------------------------------
def sinfo_partitions() -> list[dict]:
    """Partitions as `sinfo` reports them: name, default?, nodes, CPUs and GPUs per node, memory (GB)."""
    result = subprocess.run(["sinfo", "-h", "-o", "%P|%D|%c|%m|%G|%l"], capture_output=True, text=True, timeout=DETECT_TIMEOUT_S)
    if result.returncode != 0:
        raise UsageError(f"sinfo failed: {result.stderr.strip() or result.returncode}")
    partitions: dict[str, dict] = {}
    for line in result.stdout.splitlines():
        name, nodes, cpus, mem, gres, limit = (line.split("|") + [""] * 6)[:6]
        default = name.endswith("*")
        name = name.rstrip("*")
        gpus = 0
        for item in gres.split(","):
            parts = item.split(":")
            if parts[0] == "gpu" and parts[-1].split("(")[0].isdigit():
                gpus = max(gpus, int(parts[-1].split("(")[0]))
        entry = partitions.setdefault(name, {"name": name, "default": default, "nodes": 0, "cpus": 0, "gpus_per_node": 0,
                                             "mem_gb": 0, "time_limit": limit})
        entry["nodes"] += int(nodes) if nodes.isdigit() else 0
        entry["cpus"] = max(entry["cpus"], int(cpus.rstrip("+")) if cpus.rstrip("+").isdigit() else 0)
        entry["mem_gb"] = max(entry["mem_gb"], int(mem.rstrip("+")) // 1024 if mem.rstrip("+").isdigit() else 0)
        entry["gpus_per_node"] = max(entry["gpus_per_node"], gpus)
    return list(partitions.values())


def starter_site() -> tuple[dict, list[str]]:
    """A site file's contents from what this machine shows, and notes on how each was found."""
    backend, why = detect_backend()
    site: dict[str, Any] = {"backend": backend}
    notes = [f"backend: {backend} ({why})"]
    defaults: dict[str, Any] = {}
    if backend == "slurm":
        partitions = sinfo_partitions()
        chosen = next((p for p in partitions if p["default"]), partitions[0] if partitions else None)
        if chosen:
            resources: dict[str, Any] = {"partition": chosen["name"]}
            if chosen["gpus_per_node"]:
                resources["gpus_per_node"] = chosen["gpus_per_node"]
                resources["cpus_per_task"] = max(1, chosen["cpus"] // chosen["gpus_per_node"])
            else:
                resources["gpus_per_node"] = 0
                resources["tasks_per_node"] = 1
                resources["cpus_per_task"] = max(1, chosen["cpus"])
            defaults["resources"] = resources
            notes.append("partitions (sinfo): " + ", ".join(f"{p['name']}{'*' if p['default'] else ''} {p['nodes']} nodes x "
                                                            f"{p['cpus']} CPUs, {p['gpus_per_node']} GPUs" for p in partitions))
    elif backend == "ray":
        defaults["ray"] = {"address": os.environ["RAY_ADDRESS"]}
    if os.environ.get("MLFLOW_TRACKING_URI"):
        defaults["tracking"] = {"uri": os.environ["MLFLOW_TRACKING_URI"]}
        notes.append("tracking: from MLFLOW_TRACKING_URI")
    site["output_root"] = os.environ.get("MAECTL_OUTPUT_ROOT") or str(Path.cwd() / "out")
    site["shared_paths"] = []
    site["datasets"] = dict(_load(locations.PROJECT_ROOT / "site.yaml", 0.0).config.datasets) if (locations.PROJECT_ROOT / "site.yaml").is_file() else {}
    if defaults:
        site["defaults"] = defaults
    return site, notes
