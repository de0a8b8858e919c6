"""Training engines: pretrain, fine-tune, linear probe. Ranks from the torch.distributed
environment; metrics out through a sink. No Ray, SLURM or MLflow here."""

from .config import RunConfig, load_run_config
from .loop import NonFiniteLoss, Preempted, RunSummary, StopFlag, train
from .sinks import JsonlSink, MetricSink, MultiSink, NullSink

__all__ = ["RunConfig", "load_run_config", "train", "RunSummary", "StopFlag", "NonFiniteLoss", "Preempted", "MetricSink", "NullSink", "JsonlSink", "MultiSink"]
