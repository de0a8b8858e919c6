"""Debian packages the SLURM part of the stack needs, installed once (no-op when present)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

SLURM_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server")

# Debian's maintainer scripts try to start every daemon they install. There is no systemd
# here, and we start the daemons ourselves under infra/.state, so a policy-rc.d that answers
# "not allowed" (exit 101) keeps the install from leaving stray system daemons behind.
_POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


def missing(packages: tuple[str, ...] = SLURM_PACKAGES) -> list[str]:
    """Packages of `packages` that dpkg does not list as installed."""
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *packages],
        capture_output=True, text=True,
    )
    installed = {
        line.split()[0] for line in result.stdout.splitlines()
        if line.endswith(" installed")
    }
    return [p for p in packages if p not in installed]


def _has_candidate(package: str) -> bool:
    """True when apt's package lists already know `package` (so no `apt-get update` is needed)."""
    result = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True)
    for line in result.stdout.splitlines():
        if line.strip().startswith("Candidate:"):
            return "(none)" not in line
    return False


def ensure_installed(log_path: Path, packages: tuple[str, ...] = SLURM_PACKAGES) -> list[str]:
    """Install whatever of `packages` is missing; returns what was installed.

    Raises RuntimeError (with the log's tail available at `log_path`) on failure.
    """
    todo = missing(packages)
    if not todo:
        return []
    if os.geteuid() != 0:
        raise RuntimeError(f"Debian packages missing ({' '.join(todo)}) and not root: "
                           f"install them with apt-get, or run as root")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    apt_opts = ["-o", "DPkg::Lock::Timeout=300", "-o", "Dpkg::Use-Pty=0"]
    with open(log_path, "ab") as log:
        def run(cmd: list[str]) -> None:
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=True)

        placed_policy = False
        try:
            if not _POLICY_RC_D.exists():
                _POLICY_RC_D.write_text("#!/bin/sh\n# placed by maectl infra/stack while installing\nexit 101\n")
                _POLICY_RC_D.chmod(0o755)
                placed_policy = True
            if not all(_has_candidate(p) for p in todo):
                run(["apt-get", *apt_opts, "update", "-q"])
            run(["apt-get", *apt_opts, "install", "-y", "-q", "--no-install-recommends", *todo])
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"apt-get failed ({exc.returncode}) installing {' '.join(todo)}") from exc
        finally:
            if placed_policy:
                _POLICY_RC_D.unlink(missing_ok=True)
    still = missing(packages)
    if still:
        raise RuntimeError(f"still not installed after apt-get: {' '.join(still)}")
    return todo
