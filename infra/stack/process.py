"""Daemons we start ourselves: PID files that survive PID reuse, detached spawning,
health waiting, and stopping exactly the processes we started (never by name)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


class StackError(RuntimeError):
    """A service failed; the message says which and what to look at."""


# --- /proc ------------------------------------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], ppid [1], starttime [19])."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rindex(")") + 2:].split()


def start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def is_alive(pid: int, started: int | None = None) -> bool:
    """Running (not a zombie) and, when `started` is given, still the same process."""
    fields = _stat(pid)
    if not fields or fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, starttime) of every live descendant of `pid`: Ray and MLflow fork worker trees,
    some of which leave our process group, so they are collected by parentage."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        started = start_time(child)
        if started is not None:
            found.append((child, started))
        todo.extend(children.get(child, []))
    return found


# --- PID files --------------------------------------------------------------------------

@dataclass
class Record:
    """What the PID file of one daemon says: who it is and how it was configured."""
    pid: int
    started: int
    config: dict

    def alive(self) -> bool:
        return is_alive(self.pid, self.started)


class Daemon:
    """One long-running process of ours: `run/NAME.pid` (JSON) and `log/NAME.log`."""

    def __init__(self, name: str, run_dir: Path, log_dir: Path):
        self.name = name
        self.pidfile = run_dir / f"{name}.pid"
        self.logfile = log_dir / f"{name}.log"

    def record(self) -> Record | None:
        try:
            data = json.loads(self.pidfile.read_text())
            return Record(int(data["pid"]), int(data["started"]), dict(data.get("config", {})))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def running(self) -> Record | None:
        """The record, if its process is still the one we started."""
        rec = self.record()
        return rec if rec and rec.alive() else None

    def spawn(self, argv: list[str], *, env: dict[str, str], cwd: Path,
              config: dict | None = None, user: str | None = None) -> int:
        """Start `argv` detached (own session = own process group), output to our log."""
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        with open(self.logfile, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"\n=== {stamp} maectl stack starts: {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=cwd, start_new_session=True, close_fds=True,
                **({"user": user, "group": user, "extra_groups": []} if user else {}),
            )
        started = start_time(proc.pid)
        self.pidfile.write_text(json.dumps(
            {"pid": proc.pid, "started": started, "config": config or {}, "argv": argv}))
        return proc.pid

    def stop(self, timeout: float = 15.0) -> str:
        """SIGTERM our process, then its group and descendants, then SIGKILL what is left.

        The main process is asked first, alone: `ray start --block` drains its node and stops
        its children itself, which hangs if they are signalled at the same moment. Only the
        PID in our PID file, its process group and its descendants are ever signalled.
        """
        rec = self.running()
        if rec is None:
            self.pidfile.unlink(missing_ok=True)
            return "not running"
        family = [(rec.pid, rec.started), *descendants(rec.pid)]

        def wait(seconds: float, members: list[tuple[int, int]]) -> bool:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if not any(is_alive(p, s) for p, s in members):
                    return True
                time.sleep(0.1)
            return False

        t0 = time.monotonic()
        _signal(rec.pid, signal.SIGTERM)
        wait(timeout, family[:1])
        _signal_group(rec.pid, signal.SIGTERM)  # children its exit left behind (mlflow's uvicorn)
        for pid, started in family[1:]:
            if is_alive(pid, started):
                _signal(pid, signal.SIGTERM)
        if wait(max(2.0, timeout - (time.monotonic() - t0)), family):
            self.pidfile.unlink(missing_ok=True)
            return f"stopped in {time.monotonic() - t0:.1f}s"
        _signal_group(rec.pid, signal.SIGKILL)
        for pid, started in family:
            if is_alive(pid, started):
                _signal(pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)
        return f"killed after {time.monotonic() - t0:.0f}s (did not stop on SIGTERM)"

    def tail(self, lines: int = 25) -> str:
        return tail(self.logfile, lines)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(f"    | {line}" for line in text[-lines:])


# --- health -----------------------------------------------------------------------------

def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_owner(port: int) -> str:
    """Best-effort description of who listens on `port` (for error messages)."""
    try:
        out = subprocess.run(["ss", "-Htlnp", f"sport = :{port}"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown process"
    return out or "unknown process"


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def command_ok(argv: list[str], env: dict[str, str] | None = None, timeout: float = 10.0) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, env=env, timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def wait_healthy(daemon: Daemon, check: Callable[[], bool], timeout: float,
                 what: str = "healthy", interval: float = 0.2) -> float:
    """Poll `check` until true; fail early if the daemon dies. Returns seconds waited."""
    t0 = time.monotonic()
    while True:
        if check():
            return time.monotonic() - t0
        if daemon.running() is None:
            raise StackError(f"{daemon.name} exited before becoming {what}; "
                             f"last lines of {daemon.logfile}:\n{daemon.tail()}")
        if time.monotonic() - t0 > timeout:
            raise StackError(f"{daemon.name} not {what} after {timeout:.0f}s; "
                             f"last lines of {daemon.logfile}:\n{daemon.tail()}")
        time.sleep(interval)
