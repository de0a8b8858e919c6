"""Training engines: pretrain, fine-tune, linear probe. Ranks from the torch.distributed
environment; metrics out through a sink. No Ray, SLURM or MLflow here.

Names resolve lazily (PEP 562): `mae_core.engine.config` is plain data and imports no torch."""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "RunConfig": ".config", "load_run_config": ".config",
    "train": ".loop", "RunSummary": ".loop", "StopFlag": ".loop", "NonFiniteLoss": ".loop", "Preempted": ".loop",
    "MetricSink": ".sinks", "NullSink": ".sinks", "JsonlSink": ".sinks", "MultiSink": ".sinks",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
