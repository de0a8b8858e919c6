"""Names the stack adds to /etc/hosts (the 3-node SLURM cluster's n1..n3), and removes again.

Each line carries a tag naming the stack and its state folder, so `down` removes exactly the
lines that this stack added and nothing else (not another checkout's, not the system's).
/etc/hosts is rewritten in place, not replaced: in containers it is often a bind mount.
"""
from __future__ import annotations

import fcntl
import hashlib
from pathlib import Path

HOSTS = Path("/etc/hosts")
MARK = "maectl-stack"


def tag(state: Path, group: str) -> str:
    """The comment that marks our lines: group plus a hash of the state folder."""
    return f"{MARK}:{group}:{hashlib.sha1(str(state).encode()).hexdigest()[:8]}"


def line(names: tuple[str, ...] | list[str], mark: str, address: str = "127.0.0.1") -> str:
    return f"{address}\t{' '.join(names)}\t# {mark}"


def _is_ours(text: str, mark: str) -> bool:
    return text.rstrip().endswith(f"# {mark}")


def _edit(path: Path, change) -> bool:
    """Apply `change(lines) -> lines | None` under an exclusive lock; True when written."""
    with open(path, "r+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        lines = fh.read().splitlines()
        new = change(lines)
        if new is None:
            return False
        fh.seek(0)
        fh.write("".join(f"{x}\n" for x in new))
        fh.truncate()
        return True


def add(names: tuple[str, ...] | list[str], mark: str, path: Path = HOSTS) -> bool:
    """Add our line (once). True when /etc/hosts changed."""
    wanted = line(names, mark)

    def change(lines: list[str]) -> list[str] | None:
        if wanted in lines:
            return None
        return [x for x in lines if not _is_ours(x, mark)] + [wanted]  # stale ones replaced
    return _edit(path, change)


def remove(mark: str, path: Path = HOSTS) -> int:
    """Remove every line carrying `mark`; returns how many."""
    removed = 0

    def change(lines: list[str]) -> list[str] | None:
        nonlocal removed
        kept = [x for x in lines if not _is_ours(x, mark)]
        removed = len(lines) - len(kept)
        return kept if removed else None
    _edit(path, change)
    return removed


def present(mark: str, path: Path = HOSTS) -> bool:
    try:
        return any(_is_ours(x, mark) for x in path.read_text().splitlines())
    except FileNotFoundError:
        return False
