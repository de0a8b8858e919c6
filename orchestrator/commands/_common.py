"""Small helpers shared by the job commands: console, time formatting, reading a run's metrics."""

from __future__ import annotations

import json
import time


def console(stderr: bool = False):
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output (logs, CI) is read in wide windows: don't wrap tables at rich's default 80.
    width = None if stream.isatty() else 160
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


def ago(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    seconds = max(0, time.time() - timestamp)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def duration(start: float | None, end: float | None) -> str:
    if not start:
        return "-"
    seconds = max(0, (end or time.time()) - start)
    return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"


def read_metrics(output_dir: str) -> list[dict]:
    """The records of <output_dir>/metrics.jsonl (rank 0's JsonlSink), [] if there are none yet."""
    import fsspec

    try:
        with fsspec.open(f"{output_dir.rstrip('/')}/metrics.jsonl", "r") as f:
            lines = f.read().splitlines()
    except (FileNotFoundError, OSError):
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written right now
    return records


def latest_values(records: list[dict]) -> dict[str, tuple[int, float]]:
    """metric -> (step, value) of its last record."""
    latest: dict[str, tuple[int, float]] = {}
    for record in records:
        for key, value in record.get("metrics", {}).items():
            latest[key] = (record["step"], value)
    return latest


def read_run_id(output_dir: str) -> str | None:
    import fsspec

    try:
        with fsspec.open(f"{output_dir.rstrip('/')}/mlflow_run_id", "r") as f:
            return f.read().strip() or None
    except (FileNotFoundError, OSError):
        return None
