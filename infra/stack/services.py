"""The Python services of the stack: S3 API (moto), MLflow tracking server, Ray head."""
from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from . import config as cfg
from .base import Service
from .process import StackError, http_ok


class S3(Service):
    """moto's standalone server: S3 API on loopback, in memory (empty after each start)."""
    name, group, timeout = "s3", "s3", 20.0

    def ports(self) -> dict[str, int]:
        return {"s3": self.s.ports["s3"]}

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s.ports['s3']}"

    def argv(self) -> list[str]:
        return [self.s.bin("moto_server"), "-H", "127.0.0.1", "-p", str(self.s.ports["s3"])]

    def check(self, config: dict) -> bool:
        return http_ok(f"http://127.0.0.1:{config['ports']['s3']}/")

    def finish(self) -> None:
        """Create the test bucket (moto checks no signature, so plain HTTP is enough)."""
        url = f"{self.endpoint()}/{self.s.bucket}"
        if http_ok(url):
            return
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="PUT"), timeout=5).close()
        except (urllib.error.URLError, OSError) as exc:
            raise StackError(f"s3: could not create bucket {self.s.bucket!r} at {url}: {exc}") from exc


class MLflow(Service):
    """`mlflow server`, one worker, SQLite backend, artifacts proxied from a local folder."""
    name, group, timeout, stop_timeout = "mlflow", "mlflow", 120.0, 15.0

    def ports(self) -> dict[str, int]:
        return {"mlflow": self.s.ports["mlflow"]}

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s.ports['mlflow']}"

    @property
    def home(self) -> Path:
        return self.s.state / "mlflow"

    def argv(self) -> list[str]:
        return [self.s.bin("mlflow"), "server",
                "--backend-store-uri", f"sqlite:///{self.home / 'mlflow.db'}",
                "--artifacts-destination", str(self.home / "artifacts"),
                "--host", "127.0.0.1", "--port", str(self.s.ports["mlflow"]), "--workers", "1"]

    def env(self) -> dict[str, str]:
        env = super().env()
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        env.pop("MLFLOW_TRACKING_URI", None)
        return env

    def cwd(self) -> Path:
        return self.home

    def prepare(self) -> None:
        (self.home / "artifacts").mkdir(parents=True, exist_ok=True)

    def check(self, config: dict) -> bool:
        return http_ok(f"http://127.0.0.1:{config['ports']['mlflow']}/health")


RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",               # 2.60 turns on token auth for new clusters
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keep 127.0.0.1 (not the routable address)
    "RAY_USAGE_STATS_ENABLED": "0",
}


class Ray(Service):
    """`ray start --head --block` on 127.0.0.1, 2 CPUs. Stopped by signalling our PID only:
    never `ray stop`, which kills every Ray process on the machine by name."""
    name, group, timeout, stop_timeout = "ray", "ray", 90.0, 20.0

    def ports(self) -> dict[str, int]:
        p = self.s.ports
        return {k: p[k] for k in ("ray", "ray_dashboard", "ray_client", "ray_agent")}

    def config(self) -> dict:
        return {"ports": self.ports(), "cpus": self.s.ray_cpus,
                "object_store": self.s.ray_object_store_bytes, "venv": str(self.s.venv)}

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s.ports['ray_dashboard']}"

    def argv(self) -> list[str]:
        p = self.s.ports
        return [self.s.bin("ray"), "start", "--head", "--block",
                f"--num-cpus={self.s.ray_cpus}", "--num-gpus=0",
                "--node-ip-address=127.0.0.1", f"--port={p['ray']}",
                "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={p['ray_dashboard']}",
                f"--ray-client-server-port={p['ray_client']}",
                f"--dashboard-agent-listen-port={p['ray_agent']}",
                f"--object-store-memory={self.s.ray_object_store_bytes}",
                f"--temp-dir={self.s.runtime / 'ray'}", "--disable-usage-stats"]

    def env(self) -> dict[str, str]:
        # The venv's bin first: Ray Job entrypoints resolve `python` from the head's PATH.
        env = super().env()
        env.update(RAY_ENV)
        return env

    def cwd(self) -> Path:
        return self.s.root

    def prepare(self) -> None:
        self.s.runtime.mkdir(parents=True, exist_ok=True)

    def check(self, config: dict) -> bool:
        base = f"http://127.0.0.1:{config['ports']['ray_dashboard']}"
        return http_ok(f"{base}/api/version") and http_ok(f"{base}/api/jobs/")


def services(s: cfg.Settings) -> dict[str, Service]:
    return {svc.name: svc for svc in (S3(s), MLflow(s), Ray(s))}
