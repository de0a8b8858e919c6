"""Where maectl keeps things: the job store, run outputs, experiment files.

    MAECTL_HOME         job store and per-job folders (default ~/.maectl)
    MAECTL_OUTPUT_ROOT  run outputs, <root>/<experiment>/<handle> (default ./out); may be s3://
    MAECTL_JOBS_PATH    extra folders of experiment YAMLs, ':'-separated, searched before jobs/
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def maectl_home() -> Path:
    return Path(os.environ.get("MAECTL_HOME") or Path.home() / ".maectl").expanduser().absolute()


def output_root() -> str:
    """Absolute, so that a detached job and a later `maectl status` agree wherever they run."""
    root = os.environ.get("MAECTL_OUTPUT_ROOT") or "out"
    if "://" in root:
        return root.rstrip("/")
    return str(Path(root).expanduser().absolute())


def jobs_dirs() -> list[Path]:
    extra = [Path(p).expanduser() for p in os.environ.get("MAECTL_JOBS_PATH", "").split(":") if p]
    dirs = [*extra, PROJECT_ROOT / "jobs"]
    return [d.absolute() for d in dirs if d.is_dir()]
