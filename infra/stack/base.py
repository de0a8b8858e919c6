"""The shape every service of the stack shares: idempotent `ensure`, `healthy`, `stop`."""
from __future__ import annotations

import os
import time
from pathlib import Path

from .config import Settings
from .process import Daemon, StackError, port_open, port_owner, wait_healthy


class Service:
    """One daemon we own. Subclasses fill in `argv`, `check` and optionally `prepare`/`finish`."""

    name: str = ""
    group: str = ""
    timeout: float = 30.0           # seconds to become healthy
    stop_timeout: float = 10.0

    def __init__(self, settings: Settings):
        self.s = settings
        self.daemon = Daemon(self.name, settings.run, settings.log)

    # -- to override -----------------------------------------------------------------------
    def config(self) -> dict:
        """What this service is started with (ports...); a change means a restart."""
        return {"ports": self.ports()}

    def ports(self) -> dict[str, int]:
        return {}

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for key in ("RAY_ADDRESS", "MAECTL_STACK_CALLER", "MAECTL_STACK_SELF", "MAECTL_STACK_CWD"):
            env.pop(key, None)  # client / launcher settings; must not leak into our daemons
        env["PATH"] = f"{self.s.venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        return env

    def cwd(self) -> Path:
        return self.s.state

    def user(self) -> str | None:
        return None

    def check(self, config: dict) -> bool:
        """Cheap health probe against a service started with `config`."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Before spawning: config files, data folders, first-time initialisation."""

    def finish(self) -> None:
        """After it is healthy: buckets, accounts, smoke tests. Also run when already up."""

    def endpoint(self) -> str:
        return ""

    # -- shared behaviour ------------------------------------------------------------------
    def healthy(self) -> bool:
        rec = self.daemon.running()
        return bool(rec) and self.check(rec.config)

    def state(self) -> tuple[str, int | None]:
        """('healthy'|'unhealthy'|'stopped'|'external', pid)."""
        rec = self.daemon.running()
        if rec is None:
            return ("external", None) if self.external_ok() else ("stopped", None)
        return ("healthy" if self.check(rec.config) else "unhealthy"), rec.pid

    def external_ok(self) -> bool:
        """A healthy instance that is not ours and that we may use (munge only)."""
        return False

    def ensure(self) -> str:
        """Make the service healthy; returns what was done (for the report)."""
        rec = self.daemon.running()
        wanted = self.config()
        if rec is not None:
            if rec.config == wanted and self.check(wanted):
                self.finish()
                return f"already up (pid {rec.pid})"
            why = "configuration changed" if rec.config != wanted else "unhealthy"
            self.daemon.stop(self.stop_timeout)
            note = f"restarted ({why}); "
        elif self.external_ok():
            self.finish()
            return "already running outside the stack; using it"
        else:
            note = ""
        self.check_ports_free()
        program = self.argv()[0]
        if not os.access(program, os.X_OK):
            raise StackError(f"{self.name}: {program} not found; run `infra/dev.sh setup` "
                             f"(Python services) or let `up` install the Debian packages (slurm)")
        self.prepare()
        t0 = time.monotonic()
        pid = self.daemon.spawn(self.argv(), env=self.env(), cwd=self.cwd(),
                                config=wanted, user=self.user())
        waited = wait_healthy(self.daemon, lambda: self.check(wanted), self.timeout)
        self.finish()
        return f"{note}started (pid {pid}), healthy in {waited:.1f}s, ready in {time.monotonic() - t0:.1f}s"

    def stop(self) -> str:
        return self.daemon.stop(self.stop_timeout)

    def check_ports_free(self) -> None:
        for label, port in self.ports().items():
            if port_open(port):
                raise StackError(
                    f"{self.name}: port {port} ({label}) is already in use by a process this stack "
                    f"did not start: {port_owner(port)}\n    set MAECTL_{label.upper()}_PORT "
                    f"to another port, or stop that process")
