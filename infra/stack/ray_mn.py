"""A 2-node Ray cluster on this one host, beside the single-node head.

Each node has its own loopback address (127.0.2.1, 127.0.2.2) so Ray treats them as two
machines; this cluster must NOT run with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (single-node
mode refuses a second node). The second node runs in a private mount namespace: its own /tmp,
/dev/shm and HOME, the venv read-only, so a job that silently relies on a local disk shared
with the head fails here as it would on a real cluster. Every port is fixed (config.py).
Stopped by signalling our PIDs only: never `ray stop`, which kills every Ray on the machine.
"""
from __future__ import annotations

import json
import shlex
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from . import config as cfg
from .base import Service
from .process import StackError, http_ok, port_open, port_owner

NODE_CPUS = 1
OBJECT_STORE_BYTES = 256 << 20   # per node; the machine's memory is shared by everyone
SHM_SIZE = "1g"                  # the private node's /dev/shm (tmpfs: only what is used counts)

RAY_MN_ENV = {
    "RAY_AUTH_MODE": "disabled",             # 2.60 turns on token auth for new clusters
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",   # SIGTERM: ~8 s instead of ~30 s
}


def node_ports(s: cfg.Settings, k: int) -> dict[str, int]:
    """Node k's own ports (k = 0 head, 1 worker); all distinct from the single-node head's."""
    base, workers = s.ports["ray_mn_node"] + 10 * k, s.ports["ray_mn_workers"] + 100 * k
    return {"node_manager": base, "object_manager": base + 1, "metrics_export": base + 2,
            "dashboard_agent_grpc": base + 3, "dashboard_agent_listen": base + 4,
            "runtime_env_agent": base + 5, "min_worker": workers, "max_worker": workers + 99}


def node_args(s: cfg.Settings, k: int) -> list[str]:
    p = node_ports(s, k)
    return [f"--node-ip-address={cfg.RAY_MN_IPS[k]}", f"--num-cpus={NODE_CPUS}", "--num-gpus=0",
            f"--resources={json.dumps({cfg.RAY_MN_RESOURCES[k]: 1})}",
            f"--node-manager-port={p['node_manager']}", f"--object-manager-port={p['object_manager']}",
            f"--metrics-export-port={p['metrics_export']}",
            f"--dashboard-agent-grpc-port={p['dashboard_agent_grpc']}",
            f"--dashboard-agent-listen-port={p['dashboard_agent_listen']}",
            f"--runtime-env-agent-port={p['runtime_env_agent']}",
            f"--min-worker-port={p['min_worker']}", f"--max-worker-port={p['max_worker']}",
            f"--object-store-memory={OBJECT_STORE_BYTES}", "--disable-usage-stats"]


def alive_nodes(s: cfg.Settings, timeout: float = 3.0) -> list[str]:
    """IPs of the nodes the head's GCS reports ALIVE (the dashboard's state API)."""
    url = f"http://127.0.0.1:{s.ports['ray_mn_dashboard']}/api/v0/nodes?limit=100"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError):
        return []
    rows = data.get("data", {}).get("result", {}).get("result", []) if isinstance(data, dict) else []
    return sorted(r.get("node_ip", "") for r in rows if r.get("state") == "ALIVE")


class _RayNode(Service):
    group, timeout, stop_timeout = "ray_mn", 120.0, 25.0
    k = 0

    def ports(self) -> dict[str, int]:
        own = {f"ray_mn_node+{v - self.s.ports['ray_mn_node']}": v
               for n, v in node_ports(self.s, self.k).items() if not n.endswith("_worker")}
        return own

    def check_ports_free(self) -> None:
        # Ray binds its node's ports on the node's own address, not 127.0.0.1.
        for label, port in self.ports().items():
            host = "127.0.0.1" if label in ("ray_mn_dashboard", "ray_mn_client") else cfg.RAY_MN_IPS[self.k]
            if port_open(port, host) or port_open(port):
                raise StackError(
                    f"{self.name}: port {port} ({label}) is already in use by a process this stack "
                    f"did not start: {port_owner(port)}\n    set MAECTL_{label.split('+')[0].upper()}_PORT "
                    f"to another base port, or stop that process")

    def env(self) -> dict[str, str]:
        env = super().env()   # the venv's bin first: job entrypoints resolve `python` from PATH
        env.update(RAY_MN_ENV)
        env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)   # single-node mode: see module doc
        return env

    def cwd(self) -> Path:
        return self.s.root


class RayMNHead(_RayNode):
    """Node a: the head (GCS, dashboard + job API on 127.0.0.1), 1 CPU, resource `node_a`."""
    name, k = "ray_mn_head", 0

    def ports(self) -> dict[str, int]:
        p = self.s.ports
        return {"ray_mn": p["ray_mn"], "ray_mn_dashboard": p["ray_mn_dashboard"],
                "ray_mn_client": p["ray_mn_client"], **super().ports()}

    def config(self) -> dict:
        return {"ports": self.ports(), "args": node_args(self.s, 0), "venv": str(self.s.venv)}

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s.ports['ray_mn_dashboard']}"

    @property
    def temp_dir(self) -> Path:
        return self.s.runtime / "ray_mn"   # short: Ray puts UNIX sockets under it

    def argv(self) -> list[str]:
        p = self.s.ports
        return [self.s.bin("ray"), "start", "--head", "--block", f"--port={p['ray_mn']}",
                "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={p['ray_mn_dashboard']}",
                f"--ray-client-server-port={p['ray_mn_client']}",
                f"--temp-dir={self.temp_dir}", *node_args(self.s, 0)]

    def prepare(self) -> None:
        self.s.runtime.mkdir(parents=True, exist_ok=True)

    def check(self, config: dict) -> bool:
        base = f"http://127.0.0.1:{config['ports']['ray_mn_dashboard']}"
        return http_ok(f"{base}/api/version") and http_ok(f"{base}/api/jobs/")


class RayMNWorker(_RayNode):
    """Node b: joins the head from 127.0.2.2, 1 CPU, resource `node_b`, private /tmp, /dev/shm, HOME."""
    name, k = "ray_mn_worker", 1

    def __init__(self, settings: cfg.Settings, head: RayMNHead):
        super().__init__(settings)
        self.head = head

    @property
    def private(self) -> Path:
        """What the node sees as /tmp (its HOME is /tmp/home). Not under /tmp, so the head's
        /tmp does not contain it either."""
        return self.s.ray_mn_home / "worker_tmp"

    def config(self) -> dict:
        rec = self.head.daemon.running()
        # A restarted head is a new cluster: the worker must rejoin, so the head's identity is
        # part of the worker's configuration.
        return {"ports": self.ports(), "args": node_args(self.s, 1), "venv": str(self.s.venv),
                "head": [rec.pid, rec.started] if rec else None}

    def argv(self) -> list[str]:
        gcs = f"{cfg.RAY_MN_IPS[0]}:{self.s.ports['ray_mn']}"
        ray = [self.s.bin("ray"), "start", "--block", f"--address={gcs}", "--temp-dir=/tmp/ray",
               *node_args(self.s, 1)]
        venv, tmp = shlex.quote(str(self.s.venv)), shlex.quote(str(self.private))
        script = " && ".join([
            f"mount --bind {venv} {venv}", f"mount -o remount,bind,ro {venv}",
            f"mount --rbind {tmp} /tmp",
            f"mount -t tmpfs -o size={SHM_SIZE},mode=1777 tmpfs /dev/shm",
            "mkdir -p /tmp/home", "export HOME=/tmp/home",
            f"exec {shlex.join(ray)}"])
        # unshare and sh exec in place: the PID we record is `ray start`'s own.
        return ["/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script]

    def prepare(self) -> None:
        # Every start is a fresh machine: an empty /tmp (and HOME).
        shutil.rmtree(self.private, ignore_errors=True)
        self.private.mkdir(parents=True)
        self.private.chmod(0o1777)

    def check(self, config: dict) -> bool:
        return cfg.RAY_MN_IPS[1] in alive_nodes(self.s) and self.head.healthy()

    def endpoint(self) -> str:
        return f"{cfg.RAY_MN_IPS[1]} (joins {cfg.RAY_MN_IPS[0]}:{self.s.ports['ray_mn']})"


def services(s: cfg.Settings) -> dict[str, Service]:
    head = RayMNHead(s)
    return {svc.name: svc for svc in (head, RayMNWorker(s, head))}

