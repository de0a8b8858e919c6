"""Where metrics leave the engine. The engine only ever calls these three methods, on rank 0.

The orchestrator passes its MLflow sink; the engine itself knows nothing of MLflow.
"""

from __future__ import annotations

import json
import math
import time
from typing import Protocol


class MetricSink(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None: ...

    def close(self) -> None: ...


class NullSink:
    """Do-nothing sink: the loop never asks whether logging is on."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlSink:
    """One JSON object per line: {"step": s, "time": t, "metrics": {...}} or {"artifact": path}."""

    def __init__(self, path: str):
        import fsspec

        self._file = fsspec.open(path, "a").open()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        clean = {k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": step, "time": time.time(), "metrics": clean}) + "\n")
        self._file.flush()

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        self._file.write(json.dumps({"artifact": local_path, "artifact_path": artifact_path}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class MultiSink:
    def __init__(self, *sinks: MetricSink):
        self.sinks = sinks

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for sink in self.sinks:
            sink.log_metrics(metrics, step)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        for sink in self.sinks:
            sink.log_artifact(local_path, artifact_path)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def read_jsonl_metrics(path: str) -> list[dict]:
    """The metric records of a JsonlSink file (tests, `maectl logs`)."""
    import fsspec

    with fsspec.open(path, "r") as f:
        return [r for r in map(json.loads, f) if "metrics" in r]
