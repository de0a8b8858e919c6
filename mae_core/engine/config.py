"""The training engine's configuration: small component-owned dataclasses, one per concern.

A run config (YAML) has the sections below; `load_run_config` validates it strictly.

    task: pretrain | finetune | linprobe
    output_dir: local folder or s3://bucket/prefix (checkpoints, metrics, images)
    model: {name: mae_vit_base_patch16, <MAEConfig overrides>...}
    data: DataConfig            optim: OptimConfig          train: TrainConfig
    checkpoint: CheckpointConfig  monitor: MonitorConfig    finetune: FinetuneConfig
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Literal

from ..data import DataConfig
from ..models.mae import MAEConfig
from ..models.registry import model_config
from ..structured import ConfigError, from_dict, to_dict

Task = Literal["pretrain", "finetune", "linprobe"]


@dataclass(kw_only=True)
class OptimConfig:
    """lr = base_lr * effective_batch / 256 unless `lr` is given; per-iteration warmup + half-cosine."""

    name: Literal["adamw", "lars"] = "adamw"
    base_lr: float = 1.5e-4
    lr: float | None = None
    min_lr: float = 0.0
    warmup_epochs: float = 40.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    momentum: float = 0.9  # LARS
    layer_decay: float | None = None  # fine-tune: layer-wise lr decay
    clip_grad: float | None = None
    fused: bool = False  # torch's fused AdamW kernel (GPU)

    def __post_init__(self):
        for name in ("base_lr", "min_lr", "warmup_epochs", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0, got {getattr(self, name)}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ConfigError("layer_decay", f"must be in (0, 1], got {self.layer_decay}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ConfigError("clip_grad", f"must be > 0, got {self.clip_grad}")


@dataclass(kw_only=True)
class TrainConfig:
    epochs: int = 800
    accum_iter: int = 1
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    max_steps: int | None = None  # stop after this many optimizer steps (smoke tests, benchmarks)
    log_every: int = 20  # optimizer steps between step-level metric records

    def __post_init__(self):
        if self.epochs < 1:
            raise ConfigError("epochs", f"must be >= 1, got {self.epochs}")
        if self.accum_iter < 1:
            raise ConfigError("accum_iter", f"must be >= 1, got {self.accum_iter}")
        if self.log_every < 1:
            raise ConfigError("log_every", f"must be >= 1, got {self.log_every}")


@dataclass(kw_only=True)
class CheckpointConfig:
    every_steps: int | None = None  # optimizer steps; besides every epoch end
    every_minutes: float | None = None  # wall clock, for preemption-heavy clusters
    keep_last: int = 2
    keep_every_epochs: int | None = 20  # also keep the checkpoint ending each N-th epoch
    resume: Literal["auto", "never"] | str = "auto"  # auto: latest in output_dir; or an explicit path
    init_from: str | None = None  # fine-tune / linear probe: pretrained weights (ours or official)

    def __post_init__(self):
        if self.keep_last < 1:
            raise ConfigError("keep_last", f"must be >= 1, got {self.keep_last}")
        if self.every_steps is not None and self.every_steps < 1:
            raise ConfigError("every_steps", f"must be >= 1, got {self.every_steps}")
        if self.every_minutes is not None and self.every_minutes <= 0:
            raise ConfigError("every_minutes", f"must be > 0, got {self.every_minutes}")


@dataclass(kw_only=True)
class MonitorConfig:
    knn_every_epochs: int | None = None  # online kNN top-1 on encoder features
    knn_k: int = 20
    knn_temperature: float = 0.07
    knn_max_train_samples: int = 20000
    recon_every_epochs: int | None = None  # reconstruction PNG through the sink
    recon_images: int = 8


@dataclass(kw_only=True)
class FinetuneConfig:
    num_classes: int = 1000
    global_pool: Literal["avg", "token"] = "avg"
    drop_path: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    label_smoothing: float = 0.1
    eval_every_epochs: int = 1


@dataclass(kw_only=True)
class RunConfig:
    task: Task = "pretrain"
    output_dir: str
    model: dict = field(default_factory=lambda: {"name": "mae_vit_base_patch16"})
    data: DataConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self):
        if "name" not in self.model:
            raise ConfigError("model.name", "is required")
        overrides = {k: v for k, v in self.model.items() if k != "name"}
        known = {f.name for f in dataclasses.fields(MAEConfig)}
        for key in overrides:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                raise ConfigError(f"model.{key}", "unknown model argument" + (f"; did you mean 'model.{close[0]}'?" if close else ""))
        try:
            model_config(self.model["name"], **overrides)
        except KeyError as err:
            raise ConfigError("model.name", str(err).strip("'\"")) from None
        except (TypeError, ValueError) as err:
            first_word = str(err).split(" ", 1)[0]
            raise ConfigError(f"model.{first_word}" if first_word in known else "model", str(err)) from None

    def model_config(self):
        return model_config(self.model["name"], **{k: v for k, v in self.model.items() if k != "name"})

    def to_dict(self) -> dict:
        return to_dict(self)


def load_run_config(data: dict) -> RunConfig:
    """Validate a plain dict (from YAML) into a RunConfig; ConfigError names the dotted key."""
    return from_dict(RunConfig, data)


def replace(config, **changes):
    return dataclasses.replace(config, **changes)
