"""`infra/stack.sh up|down|status|clean [GROUP...]` — see docs/operations.md."""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import shlex
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from . import config as cfg
from . import hosts, packages, ray_mn, services, slurm, slurm_mn
from .base import Service
from .process import StackError, is_alive, start_time

ROOT = Path(__file__).resolve().parents[2]


class Reporter:
    """Thread-safe progress lines with the time since the command started."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, who: str, msg: str) -> None:
        with self._lock:
            print(f"[{time.monotonic() - self.t0:5.1f}s] {who:<10} {msg}", flush=True)


class Stack:
    def __init__(self, s: cfg.Settings):
        self.s = s
        self.slurm = slurm.services(s)
        self.slurm_mn = slurm_mn.services(s)
        self.ray_mn = ray_mn.services(s)
        self.other = services.services(s)
        self.all: dict[str, Service] = {**self.slurm, **self.other, **self.slurm_mn, **self.ray_mn}
        self.say = Reporter()
        self.started: list[Service] = []   # by this invocation (stopped again if `up` fails)
        self._started_lock = threading.Lock()

    # -- up --------------------------------------------------------------------------------
    def _ensure(self, svc: Service) -> None:
        was_running = svc.daemon.running() is not None
        what = svc.ensure()
        if svc.daemon.running() is not None and (not was_running or what.startswith("restarted")):
            with self._started_lock:
                self.started.append(svc)
        self.say(svc.name, what)

    def members(self, group: str) -> list[Service]:
        """The daemons a group needs (slurm_mn: the shared accounting chain, then its own)."""
        if group == "slurm":
            return list(self.slurm.values())
        if group == "slurm_mn":
            return [self.slurm[n] for n in cfg.SLURM_SHARED] + list(self.slurm_mn.values())
        if group == "ray_mn":
            return list(self.ray_mn.values())
        return [self.other[group]]

    def _up_slurm(self, want: list[str]) -> None:
        """Both SLURM clusters in one job: they share munge, MariaDB and slurmdbd."""
        t0 = time.monotonic()
        installed = packages.ensure_installed(self.s.log / "apt.log")
        if installed:
            self.say("apt", f"installed {' '.join(installed)} in {time.monotonic() - t0:.1f}s")
        slurm.prepare_config(self.s)  # slurmdbd.conf and sacctmgr read this cluster's folder
        with ThreadPoolExecutor(2) as pool:  # munge and MariaDB do not depend on each other
            for fut in [pool.submit(self._ensure, self.slurm[n]) for n in ("munge", "mariadb")]:
                fut.result()
        self._ensure(self.slurm["slurmdbd"])
        shared_started = any(svc.name in cfg.SLURM_SHARED for svc in self.started)
        jobs = []
        if "slurm" in want:
            jobs.append(lambda: self._up_slurm_single(shared_started))
        if "slurm_mn" in want:
            jobs.append(lambda: self._up_slurm_mn(shared_started))
        with ThreadPoolExecutor(len(jobs) or 1) as pool:
            for fut in [pool.submit(fn) for fn in jobs]:
                fut.result()

    def _up_slurm_single(self, shared_started: bool) -> None:
        for name in ("slurmctld", "slurmd"):
            self._ensure(self.slurm[name])
        if shared_started or any(svc.group == "slurm" and svc.name not in cfg.SLURM_SHARED
                                 for svc in self.started):
            took = self.slurm["slurmd"].smoke_test()
            self.say("slurm", f"srun smoke test + sacct ok in {took:.1f}s")

    def _up_slurm_mn(self, shared_started: bool) -> None:
        t0 = time.monotonic()
        slurm_mn.prepare(self.s)   # /etc/hosts lines for n1..n3, slurm.conf
        slurm_mn.register_cluster(self.s)
        self._ensure(self.slurm_mn["slurmctld_mn"])
        for svc in list(self.slurm_mn.values())[1:]:
            self._ensure(svc)
        if shared_started or any(svc.group == "slurm_mn" for svc in self.started):
            took = slurm_mn.smoke_test(self.s)
            self.say("slurm_mn", f"srun -N{len(cfg.SLURM_MN_NODES)} hostname + sacct ok in {took:.1f}s")
        idle = slurm_mn.idle_nodes(self.s)
        self.say("slurm_mn", f"partition {cfg.SLURM_MN_PARTITION}: {len(idle)} idle node(s) "
                             f"{' '.join(idle)}; {time.monotonic() - t0:.1f}s")

    def _up_ray_mn(self) -> None:
        t0 = time.monotonic()
        for svc in self.ray_mn.values():   # head first: the worker's configuration names it
            self._ensure(svc)
        nodes = ray_mn.alive_nodes(self.s)
        self.say("ray_mn", f"{len(nodes)} node(s) alive: {' '.join(nodes)}; {time.monotonic() - t0:.1f}s")

    def up(self, groups: list[str]) -> int:
        for d in (self.s.run, self.s.log, self.s.runtime):
            d.mkdir(parents=True, exist_ok=True)
        taken = self._ports_taken(groups)
        if taken:
            print("\n".join(f"stack: {msg}" for msg in taken), file=sys.stderr)
            return 1
        slurms = [g for g in groups if g in ("slurm", "slurm_mn")]
        jobs = {"+".join(slurms): (lambda: self._up_slurm(slurms))} if slurms else {}
        for g in groups:
            if g == "ray_mn":
                jobs[g] = self._up_ray_mn
            elif g not in slurms:
                jobs[g] = lambda g=g: self._ensure(self.other[g])
        errors: dict[str, BaseException] = {}
        with ThreadPoolExecutor(len(jobs) or 1) as pool:
            futures = {g: pool.submit(fn) for g, fn in jobs.items()}
            for g, fut in futures.items():
                try:
                    fut.result()
                except Exception as exc:  # reported below, with the service's log tail
                    errors[g] = exc
        if errors:
            for g, exc in errors.items():
                print(f"\nstack: {g} FAILED: {exc}", file=sys.stderr)
            if os.environ.get("MAECTL_STACK_KEEP_ON_FAILURE") != "1" and self.started:
                names = ", ".join(svc.name for svc in self.started)
                print(f"stack: stopping what this run started ({names}); "
                      f"MAECTL_STACK_KEEP_ON_FAILURE=1 keeps it for debugging", file=sys.stderr)
                self._stop(list(reversed(self.started)))
            if "slurm_mn" in groups and self.slurm_mn["slurmctld_mn"].daemon.running() is None:
                hosts.remove(slurm_mn.hosts_mark(self.s))   # no cluster left that needs the names
            self.write_env()
            return 1
        running = self.write_env()
        self.say("stack", f"up: {' '.join(running)} — `source {self._rel(self.s.env_file)}`")
        return 0

    def _ports_taken(self, groups: list[str]) -> list[str]:
        """Fail before starting anything when a port we need is held by someone else."""
        problems = []
        for svc in self.all.values():
            if svc.group in groups and svc.daemon.running() is None:
                try:
                    svc.check_ports_free()
                except StackError as exc:
                    problems.append(str(exc))
        return problems

    # -- down ------------------------------------------------------------------------------
    def _stop(self, svcs: list[Service]) -> None:
        for svc in svcs:
            self.say(svc.name, svc.stop())

    def _cancel_slurm_jobs(self, ctld: Service, env: dict[str, str], who: str) -> None:
        """Jobs' processes belong to slurmstepd, not to our daemons: end them first."""
        if not ctld.healthy():
            return
        ids = slurm.run_cmd(["squeue", "-h", "-o", "%i"], env=env).stdout.split()
        if not ids:
            return
        slurm.run_cmd(["scancel", *ids], env=env)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and slurm.run_cmd(["squeue", "-h", "-o", "%i"], env=env).stdout.split():
            time.sleep(0.5)
        self.say(who, f"cancelled {len(ids)} job(s)")

    def _down_slurm(self, gs: list[str]) -> None:
        if "slurm_mn" in gs:
            self._cancel_slurm_jobs(self.slurm_mn["slurmctld_mn"], slurm_mn.slurm_mn_env(self.s), "slurm_mn")
            self._stop(list(self.slurm_mn.values())[::-1])   # the slurmds, then the controller
            removed = hosts.remove(slurm_mn.hosts_mark(self.s))
            if removed:
                self.say("slurm_mn", f"removed {removed} line(s) from /etc/hosts")
        if "slurm" in gs:
            self._cancel_slurm_jobs(self.slurm["slurmctld"], slurm.slurm_env(self.s), "slurm")
            self._stop([self.slurm[n] for n in ("slurmd", "slurmctld")])
        # The accounting chain serves both clusters: keep it while the other one runs.
        users = [g for g, ctld in (("slurm", self.slurm["slurmctld"]), ("slurm_mn", self.slurm_mn["slurmctld_mn"]))
                 if g not in gs and ctld.daemon.running() is not None]
        if users:
            self.say("slurm", f"munge, mariadb, slurmdbd kept: {' '.join(users)} still uses them")
            return
        self._stop([self.slurm["slurmdbd"]])
        self._stop([self.slurm[n] for n in ("mariadb", "munge")])

    def down(self, groups: list[str]) -> int:
        slurms = [g for g in groups if g in ("slurm", "slurm_mn")]
        jobs = [lambda: self._down_slurm(slurms)] if slurms else []
        for g in groups:
            if g == "ray_mn":
                jobs.append(lambda: self._stop(list(self.ray_mn.values())[::-1]))  # worker first
            elif g not in slurms:
                jobs.append(lambda g=g: self._stop([self.other[g]]))
        with ThreadPoolExecutor(len(jobs) or 1) as pool:
            for fut in [pool.submit(fn) for fn in jobs]:
                fut.result()
        running = self.write_env()
        self.say("stack", "down" + (f" (still up: {' '.join(running)})" if running else ""))
        return 0

    # -- status / env ----------------------------------------------------------------------
    def running_groups(self) -> list[str]:
        up = []
        for g in cfg.GROUPS:
            if all(svc.state()[0] in ("healthy", "external") for svc in self.members(g)):
                up.append(g)
        return up

    def write_env(self) -> list[str]:
        running = self.running_groups()
        lines = ["# Generated by `infra/stack.sh up`: clients of the development stack.",
                 f"# Services up when written: {' '.join(running) or 'none'}"]
        for key, value in cfg.client_env(self.s, set(running)).items():
            lines.append(f"export {key}={shlex.quote(value)}")
        self.s.env_file.parent.mkdir(parents=True, exist_ok=True)
        self.s.env_file.write_text("\n".join(lines) + "\n")
        return running

    def status(self, groups: list[str]) -> int:
        rows = [("SERVICE", "STATE", "PID", "ENDPOINT / PORTS", "LOG")]
        bad = 0
        for svc in self.all.values():
            if svc.group not in groups:
                continue
            state, pid = svc.state()
            bad += state not in ("healthy", "external")
            where = svc.endpoint() or " ".join(str(p) for p in svc.ports().values()) or "-"
            rows.append((svc.name, state, str(pid or "-"), where, self._rel(svc.daemon.logfile)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        live = [str(p) for p in Leases(self.s).live()]
        print(f"env file: {self._rel(self.s.env_file)}; sessions holding the stack: {' '.join(live) or 'none'}")
        return 1 if bad else 0

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(Path(os.environ.get("MAECTL_STACK_CWD") or Path.cwd())))
        except ValueError:
            return str(path)


class Leases:
    """Who is using the stack: `up` records the calling shell (infra/dev.sh, a terminal);
    `down` from one user leaves it up while another live user still holds it."""

    def __init__(self, s: cfg.Settings):
        self.dir = s.run / "leases"

    def add(self, pid: int) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / str(pid)).write_text(json.dumps({"pid": pid, "started": start_time(pid)}))

    def remove(self, pid: int) -> None:
        (self.dir / str(pid)).unlink(missing_ok=True)

    def live(self) -> list[int]:
        found = []
        for f in sorted(self.dir.glob("*")) if self.dir.is_dir() else []:
            try:
                rec = json.loads(f.read_text())
                if is_alive(int(rec["pid"]), rec["started"]):
                    found.append(int(rec["pid"]))
                    continue
            except (ValueError, KeyError, TypeError):
                pass
            f.unlink(missing_ok=True)
        return found


@contextmanager
def locked(s: cfg.Settings):
    """One up/down at a time per state folder."""
    s.state.mkdir(parents=True, exist_ok=True)
    with open(s.state / "stack.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("stack: waiting for another infra/stack.sh up/down to finish...", flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def parse_groups(names: list[str]) -> list[str]:
    if not names:
        names = os.environ.get("MAECTL_STACK_SERVICES", "").replace(",", " ").split() or list(cfg.DEFAULT_GROUPS)
    unknown = [n for n in names if n not in cfg.GROUPS]
    if unknown:
        raise SystemExit(f"stack: unknown service(s) {' '.join(unknown)}; choose from {' '.join(cfg.GROUPS)}")
    return [g for g in cfg.GROUPS if g in names]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="infra/stack.sh", description=__doc__)
    ap.add_argument("command", choices=("up", "down", "status", "clean", "env"))
    ap.add_argument("services", nargs="*", help=f"any of {' '.join(cfg.GROUPS)} (default: all, "
                                                 f"or $MAECTL_STACK_SERVICES)")
    ap.add_argument("--force", action="store_true",
                    help="down: stop even while other sessions hold the stack")
    args = ap.parse_args(argv)
    s = cfg.load(ROOT)
    groups = parse_groups(args.services)
    stack = Stack(s)
    caller = int(os.environ.get("MAECTL_STACK_CALLER") or os.getppid())
    me = {caller, int(os.environ.get("MAECTL_STACK_SELF") or os.getpid())}
    leases = Leases(s)

    if args.command == "status":
        return stack.status(groups)
    if args.command == "env":
        print(s.env_file.read_text() if s.env_file.exists() else "", end="")
        return 0
    with locked(s):
        if args.command == "up":
            rc = stack.up(groups)
            if rc == 0:
                leases.add(caller)
            return rc
        for pid in me:
            leases.remove(pid)
        others = [p for p in leases.live() if p not in me]
        if others and not args.force:
            print(f"stack: still held by other session(s) (pid {' '.join(map(str, others))}); "
                  f"leaving it up. `infra/stack.sh down --force` stops it anyway.")
            return 0
        rc = stack.down(groups)
        if args.command == "clean":
            shutil.rmtree(s.runtime, ignore_errors=True)
            for sub in ("run", "log", "slurm", "slurm_mn", "ray_mn", "mariadb", "mlflow", "env.sh"):
                path = s.state / sub
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            print(f"stack: removed state under {s.state} and {s.runtime}")
        return rc
