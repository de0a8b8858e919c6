"""Optimizer parameter groups: weight-decay exemptions and layer-wise lr decay.

Each group carries `lr_scale`; the lr schedule sets `group["lr"] = lr * group["lr_scale"]`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn as nn

# Tokens and position embeddings are exempt from weight decay in fine-tuning (the release's
# `no_weight_decay()`); so is every 1-D tensor (biases, LayerNorm weights).
_NO_DECAY_ROOTS = ("cls_token", "mask_token", "encoder_mask_token", "pos_embed", "decoder_pos_embed")
_TOKENS = ("cls_token", "mask_token", "encoder_mask_token")


def _exempt_from_decay(name: str, param: nn.Parameter, extra: Iterable[str], roots: Iterable[str] = _NO_DECAY_ROOTS) -> bool:
    return param.ndim <= 1 or name.endswith(".bias") or name.split(".")[0] in roots or name in extra


def param_groups_weight_decay(model: nn.Module, weight_decay: float, *, decay_tokens: bool = True) -> list[dict]:
    """Two groups for pretraining: decayed weight matrices, and everything exempt at 0.

    decay_tokens=True is the release's pretraining: only 1-D tensors and biases are exempt, so
    cls_token and mask_token are decayed (its skip list is empty). False exempts the tokens too,
    as fine-tuning does. Frozen parameters (the fixed sin-cos pos embeds) are left out.
    """
    roots = tuple(r for r in _NO_DECAY_ROOTS if r not in _TOKENS) if decay_tokens else _NO_DECAY_ROOTS
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if _exempt_from_decay(name, param, (), roots) else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
    ]


def layer_id(name: str, depth: int) -> int:
    """Layer of a parameter for lr decay: embeddings 0, blocks.i i + 1, norm/head depth + 1."""
    root = name.split(".")[0]
    if root in ("cls_token", "pos_embed", "patch_embed", "mask_token", "encoder_mask_token"):
        return 0
    if root == "blocks":
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups_lrd(
    model: nn.Module,
    weight_decay: float = 0.05,
    layer_decay: float = 0.75,
    no_weight_decay_list: Iterable[str] | None = None,
) -> list[dict]:
    """Groups for fine-tuning with layer-wise lr decay: lr_scale = layer_decay ** (depth + 1 - layer_id).

    The head gets the full lr, each block below it `layer_decay` times less, the embeddings the
    least. `no_weight_decay_list` defaults to `model.no_weight_decay()` when the model has one.
    Groups are keyed by (layer, decay) and keep a deterministic order for checkpointed optimizers.
    """
    depth = len(model.blocks)
    if no_weight_decay_list is None:
        no_weight_decay_list = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    extra = set(no_weight_decay_list)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lid = layer_id(name, depth)
        decayed = not _exempt_from_decay(name, param, extra)
        group = groups.setdefault(
            (lid, decayed),
            {
                "params": [],
                "weight_decay": weight_decay if decayed else 0.0,
                "lr_scale": layer_decay ** (depth + 1 - lid),
                "layer_id": lid,
            },
        )
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]
