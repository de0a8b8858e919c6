"""Learning-rate schedule: per-iteration linear warmup, then half-cycle cosine to min_lr."""

from __future__ import annotations

import math


def scaled_lr(base_lr: float, effective_batch: int) -> float:
    """The paper's linear scaling rule: lr = base_lr * batch / 256."""
    return base_lr * effective_batch / 256


def lr_at(epoch_progress: float, *, lr: float, min_lr: float, warmup_epochs: float, epochs: int) -> float:
    """lr at a fractional epoch (epoch + batch / batches_per_epoch)."""
    if epoch_progress < warmup_epochs:
        return lr * epoch_progress / warmup_epochs
    span = max(epochs - warmup_epochs, 1e-12)
    progress = min((epoch_progress - warmup_epochs) / span, 1.0)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def apply_lr(optimizer, lr: float) -> None:
    """Set each group's lr, honouring a per-group `lr_scale` (layer-wise decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
