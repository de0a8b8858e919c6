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
from dataclasses import dataclass, field
from typing import Literal

from ..data.config import DataConfig
from ..models.config import MAEConfig, ModelConfig
from ..structured import ConfigError, bounded, from_dict, to_dict

Task = Literal["pretrain", "finetune", "linprobe"]
MAX_EPOCHS = 100_000


@dataclass(kw_only=True)
class OptimConfig:
    """lr = base_lr * effective_batch / 256 unless `lr` is given; per-iteration warmup + half-cosine."""

    name: Literal["adamw", "lars"] = "adamw"
    base_lr: float = bounded(1.5e-4, ge=0, le=100)
    lr: float | None = bounded(None, ge=0, le=100)
    min_lr: float = bounded(0.0, ge=0, le=100)
    warmup_epochs: float = bounded(40.0, ge=0, le=MAX_EPOCHS)
    weight_decay: float = bounded(0.05, ge=0, le=100)
    betas: tuple[float, float] = bounded((0.9, 0.95), ge=0, lt=1)
    momentum: float = bounded(0.9, ge=0, lt=1)  # LARS
    layer_decay: float | None = bounded(None, gt=0, le=1)  # fine-tune: layer-wise lr decay
    clip_grad: float | None = bounded(None, gt=0, le=1e6)
    # Pretraining: weight decay on cls_token and mask_token, as the release applies it (its skip
    # list is empty); false exempts them like biases, norms and position embeddings.
    decay_tokens: bool = True
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
    epochs: int = bounded(800, ge=1, le=MAX_EPOCHS)
    accum_iter: int = bounded(1, ge=1, le=65536)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = bounded(0, ge=0, lt=2**32)
    max_steps: int | None = bounded(None, ge=1)  # stop after this many optimizer steps (smoke tests, benchmarks)
    log_every: int = bounded(20, ge=1, le=10**9)  # optimizer steps between step-level metric records

    def __post_init__(self):
        if self.epochs < 1:
            raise ConfigError("epochs", f"must be >= 1, got {self.epochs}")
        if self.accum_iter < 1:
            raise ConfigError("accum_iter", f"must be >= 1, got {self.accum_iter}")
        if self.log_every < 1:
            raise ConfigError("log_every", f"must be >= 1, got {self.log_every}")


@dataclass(kw_only=True)
class CheckpointConfig:
    every_steps: int | None = bounded(None, ge=1)  # optimizer steps; besides every epoch end
    every_minutes: float | None = bounded(None, gt=0, le=10**6)  # wall clock, for preemption-heavy clusters
    keep_last: int = bounded(2, ge=1, le=10**6)
    keep_every_epochs: int | None = bounded(20, ge=1, le=MAX_EPOCHS)  # also keep the checkpoint ending each N-th epoch
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
    knn_every_epochs: int | None = bounded(None, ge=1, le=MAX_EPOCHS)  # online kNN top-1 on encoder features
    knn_k: int = bounded(20, ge=1, le=10**6)
    knn_temperature: float = bounded(0.07, gt=0, le=100)
    knn_max_train_samples: int = bounded(20000, ge=1, le=10**9)
    # Features for the kNN (and the feature probe): the normed cls token, or the mean of the normed
    # patch tokens. MAE's loss never trains the cls token; mean pooling shows what the encoder learned.
    knn_pool: Literal["cls", "avg"] = "cls"
    # Beside each kNN, a linear probe fitted on the same frozen features (train split -> val):
    # logistic regression on standardised features, a few hundred L-BFGS iterations (seconds).
    feature_probe: bool = False
    # Before the first step, the same measurements on the encoder at its random initialisation
    # (`knn/top1_random_init`, `probe/top1_random_init`): the baseline that pretraining must beat.
    baseline_at_init: bool = False
    recon_every_epochs: int | None = bounded(None, ge=1, le=MAX_EPOCHS)  # reconstruction PNG through the sink
    recon_images: int = bounded(8, ge=1, le=1024)


@dataclass(kw_only=True)
class FinetuneConfig:
    num_classes: int = bounded(1000, ge=1, le=10**7)
    global_pool: Literal["avg", "token"] = "avg"
    drop_path: float = bounded(0.1, ge=0, lt=1)
    # timm's Mixup as the release configures it: alphas 0.8 / 1.0, applied to every batch
    # (mixup_prob), cutmix instead of mixup with mixup_switch_prob, one lam per batch.
    mixup: float = bounded(0.8, ge=0, le=100)
    cutmix: float = bounded(1.0, ge=0, le=100)
    mixup_prob: float = bounded(1.0, ge=0, le=1)
    mixup_switch_prob: float = bounded(0.5, ge=0, le=1)
    mixup_mode: Literal["batch", "pair", "elem"] = "batch"
    label_smoothing: float = bounded(0.1, ge=0, lt=1)
    eval_every_epochs: int = bounded(1, ge=1, le=MAX_EPOCHS)


@dataclass(kw_only=True)
class RunConfig:
    task: Task = "pretrain"
    output_dir: str
    model: ModelConfig = field(default_factory=lambda: ModelConfig.from_plain({"name": "mae_vit_base_patch16"}))
    data: DataConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def model_config(self) -> MAEConfig:
        return self.model.arch

    def to_dict(self) -> dict:
        return to_dict(self)


def load_run_config(data: dict) -> RunConfig:
    """Validate a plain dict (from YAML) into a RunConfig; ConfigError names the dotted key."""
    return from_dict(RunConfig, data)


def replace(config, **changes):
    return dataclasses.replace(config, **changes)
