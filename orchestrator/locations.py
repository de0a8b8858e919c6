"""Where maectl keeps things: the job store, run outputs, experiment files.

    MAECTL_HOME         job store and per-job folders (default ~/.maectl)
    MAECTL_OUTPUT_ROOT  run outputs, <root>/<experiment>/<handle>; may be s3://
                        (default: the site file's output_root, else ./out)
    MAECTL_JOBS_PATH    extra folders of experiment YAMLs, ':'-separated, searched before the
                        site file's jobs_path and jobs/
    MAECTL_SITE         the site file (orchestrator/site.py)
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def maectl_home() -> Path:
    return Path(os.environ.get("MAECTL_HOME") or Path.home() / ".maectl").expanduser().absolute()


def output_root() -> str:
    """Absolute, so that a detached job and a later `maectl status` agree wherever they run."""
    root = os.environ.get("MAECTL_OUTPUT_ROOT")
    if not root:
        from .site import active

        root = active().config.output_root or "out"
    if "://" in root:
        return root.rstrip("/")
    return str(Path(root).expanduser().absolute())


def extra_jobs_dirs() -> list[Path]:
    """Folders of experiment files that come before the checkout's jobs/ (and may shadow its base files)."""
    from .site import active

    extra = [Path(p).expanduser() for p in os.environ.get("MAECTL_JOBS_PATH", "").split(":") if p]
    extra += [Path(p).expanduser() for p in active().config.jobs_path]
    return [d.absolute() for d in extra if d.is_dir()]


def jobs_dirs() -> list[Path]:
    dirs = [*extra_jobs_dirs(), PROJECT_ROOT / "jobs"]
    return [d.absolute() for d in dirs if d.is_dir()]
