"""Where the stack keeps its state, which ports it uses, and the values its clients get."""
from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

# User-facing service groups, in start order; `slurm` is a chain of five daemons.
# `slurm_mn` (3 nodes) and `ray_mn` (2 nodes) are the multi-node clusters, beside the
# single-node ones; `slurm_mn` shares munge and the accounting chain of `slurm`.
GROUPS = ("slurm", "s3", "mlflow", "ray", "slurm_mn", "ray_mn")
DEFAULT_GROUPS = GROUPS
SLURM_DAEMONS = ("munge", "mariadb", "slurmdbd", "slurmctld", "slurmd")
SLURM_SHARED = ("munge", "mariadb", "slurmdbd")   # used by both SLURM clusters

# Fixed, uncommon ports: below Linux's ephemeral range (32768+) and outside Ray's default
# worker port range (10002-19999), so neither clients nor Ray workers can grab them first.
DEFAULT_PORTS = {
    "s3": 25900,
    "mlflow": 25500,
    "mariadb": 23306,
    "slurmctld": 26817,
    "slurmd": 26818,
    "slurmdbd": 26819,
    "ray": 26379,            # GCS (what `ray.init(address=...)` takes)
    "ray_dashboard": 28265,  # dashboard + job API (RAY_ADDRESS)
    "ray_client": 26001,     # ray:// client server
    "ray_agent": 28266,      # dashboard agent HTTP
    # 3-node SLURM: its own controller; slurmd of node nK listens on slurmd_mn + K - 1.
    "slurmctld_mn": 26827,
    "slurmd_mn": 26831,
    # 2-node Ray: every port fixed, so nothing collides with the single-node head.
    "ray_mn": 26479,             # GCS of the multi-node head
    "ray_mn_dashboard": 28365,   # dashboard + job API
    "ray_mn_client": 26101,      # ray:// client server
    "ray_mn_node": 26480,        # node k's internal ports: ray_mn_node + 10k + 0..5
    "ray_mn_workers": 27000,     # node k's worker ports: ray_mn_workers + 100k + 0..99
}

# The multi-node clusters' fixed shape (the machine has 2 cores and 24 GiB for everyone).
SLURM_MN_NODES = ("n1", "n2", "n3")
SLURM_MN_PARTITION = "mn"
SLURM_MN_CLUSTER = "maectl-mn"
# Own loopback addresses, so Ray sees two machines; Linux routes all of 127/8 to `lo`.
RAY_MN_IPS = ("127.0.2.1", "127.0.2.2")
RAY_MN_RESOURCES = ("node_a", "node_b")   # one custom resource per node, to pin tasks

# Dummy credentials for the local S3 server (moto checks no signature). Not real secrets.
S3_ACCESS_KEY = "maectl-dev"
S3_SECRET_KEY = "maectl-dev-secret"
S3_REGION = "us-east-1"
# Password of the `slurm` database user on the private MariaDB bound to 127.0.0.1.
SLURMDB_PASSWORD = "maectl-dev-slurmdb"


def _port(name: str) -> int:
    env = f"MAECTL_{name.upper()}_PORT"
    raw = os.environ.get(env, "")
    if not raw:
        return DEFAULT_PORTS[name]
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise SystemExit(f"stack: {env}={raw!r} is not a port number")
    return int(raw)


def short_hostname() -> str:
    return socket.gethostname().split(".")[0]


@dataclass(frozen=True)
class Settings:
    root: Path                      # repository root
    state: Path                     # infra/.state (or MAECTL_STACK_STATE)
    runtime: Path                   # short /tmp path for UNIX sockets (108-byte limit)
    venv: Path
    ports: dict[str, int] = field(default_factory=dict)
    hostname: str = ""
    bucket: str = "maectl-test"
    partition: str = "debug"
    cluster: str = "maectl-dev"
    account: str = "maectl"
    ray_cpus: int = 2
    ray_object_store_bytes: int = 1 << 30

    @property
    def run(self) -> Path:
        return self.state / "run"

    @property
    def log(self) -> Path:
        return self.state / "log"

    @property
    def slurm_etc(self) -> Path:
        return self.state / "slurm" / "etc"

    @property
    def slurm_conf(self) -> Path:
        return self.slurm_etc / "slurm.conf"

    @property
    def slurm_mn_etc(self) -> Path:
        return self.state / "slurm_mn" / "etc"

    @property
    def slurm_mn_conf(self) -> Path:
        return self.slurm_mn_etc / "slurm.conf"

    @property
    def ray_mn_home(self) -> Path:
        return self.state / "ray_mn"

    @property
    def env_file(self) -> Path:
        return self.state / "env.sh"

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


def load(root: Path) -> Settings:
    state = Path(os.environ.get("MAECTL_STACK_STATE") or root / "infra" / ".state").resolve()
    # One short runtime folder per state folder, so two checkouts never share sockets.
    tag = hashlib.sha1(str(state).encode()).hexdigest()[:8]
    runtime = Path(os.environ.get("MAECTL_STACK_RUNTIME") or f"/tmp/maectl-{tag}")
    venv = Path(os.environ.get("MAECTL_VENV") or root / ".venv").resolve()
    return Settings(
        root=root,
        state=state,
        runtime=runtime,
        venv=venv,
        ports={name: _port(name) for name in DEFAULT_PORTS},
        hostname=short_hostname(),
        bucket=os.environ.get("MAECTL_STACK_BUCKET", "maectl-test"),
        ray_cpus=int(os.environ.get("MAECTL_RAY_CPUS", "2")),
        ray_object_store_bytes=int(os.environ.get("MAECTL_RAY_OBJECT_STORE_MB", "1024")) << 20,
    )


def client_env(s: Settings, running: set[str]) -> dict[str, str]:
    """Variables for clients of the groups in `running` (what env.sh exports)."""
    env: dict[str, str] = {"MAECTL_STACK_LOG_DIR": str(s.log)}
    if "s3" in running:
        endpoint = f"http://127.0.0.1:{s.ports['s3']}"
        env.update(
            MAECTL_S3_ENDPOINT=endpoint,
            MAECTL_S3_BUCKET=s.bucket,
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID=S3_ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=S3_SECRET_KEY,
            AWS_DEFAULT_REGION=S3_REGION,
        )
    if "mlflow" in running:
        env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{s.ports['mlflow']}"
    if "ray" in running:
        env.update(
            RAY_ADDRESS=f"http://127.0.0.1:{s.ports['ray_dashboard']}",
            MAECTL_RAY_GCS=f"127.0.0.1:{s.ports['ray']}",
            RAY_AUTH_MODE="disabled",
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
            RAY_USAGE_STATS_ENABLED="0",
        )
    if "slurm" in running:
        env.update(
            SLURM_CONF=str(s.slurm_conf),
            MAECTL_SLURM_PARTITION=s.partition,
            MAECTL_SLURM_ACCOUNT=s.account,
        )
    if "slurm_mn" in running:
        env.update(
            MAECTL_TEST_SLURM_MN_CONF=str(s.slurm_mn_conf),   # SLURM_CONF for the 3-node cluster
            MAECTL_TEST_SLURM_MN_PARTITION=SLURM_MN_PARTITION,
            MAECTL_TEST_SLURM_MN_NODES=",".join(SLURM_MN_NODES),
            MAECTL_TEST_SLURM_MN_CLUSTER=SLURM_MN_CLUSTER,
            MAECTL_TEST_SLURM_MN_ACCOUNT=s.account,
        )
    if "ray_mn" in running:
        env.update(
            MAECTL_TEST_RAY_MN_ADDRESS=f"http://127.0.0.1:{s.ports['ray_mn_dashboard']}",
            MAECTL_TEST_RAY_MN_GCS=f"{RAY_MN_IPS[0]}:{s.ports['ray_mn']}",
            MAECTL_TEST_RAY_MN_NODE_IPS=",".join(RAY_MN_IPS),
            MAECTL_TEST_RAY_MN_RESOURCES=",".join(RAY_MN_RESOURCES),
        )
    return env
