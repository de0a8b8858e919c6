"""Training engines: pretrain, fine-tune, linear probe. Ranks from the torch.distributed
environment; metrics out through a sink. No Ray, SLURM or MLflow here.

Names resolve lazily (PEP 562): `mae_core.engine.config` is plain data and imports no torch."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "RunConfig": ".config", "load_run_config": ".config",
    "train": ".loop", "RunSummary": ".loop", "StopFlag": ".loop", "NonFiniteLoss": ".loop", "Preempted": ".loop",
    "MetricSink": ".sinks", "NullSink": ".sinks", "JsonlSink": ".sinks", "MultiSink": ".sinks",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
