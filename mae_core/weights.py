"""Weights in and out: foreign checkpoints, our own checkpoint file, and export to timm.

- `filter_state_dict` / `load_pretrained`: the one entry for foreign weights (the official
  release's `{"model": ...}` files, full or encoder-only, its training checkpoints, timm or
  DDP/compiled state dicts). Prefixes are stripped, position embeddings resampled to the model's
  grid, and everything else is reported, never dropped silently.
- `save_model` / `load_model`: our file `{"model", "model_config", "format"}`, plain data only, so
  `torch.load(weights_only=True)` reads it and the file says which model it holds.
- `export_timm_encoder`: the encoder as a state dict that timm's `VisionTransformer` loads strictly.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .fileio import open_for_read, open_for_write
from .models.classifier import ClassifierConfig, VisionTransformerClassifier
from .models.mae import MAEConfig, MaskedAutoencoderViT
from .pos_embed import resample_pos_embed

FORMAT_MAE = "maectl.mae/1"
FORMAT_CLASSIFIER = "maectl.vit_classifier/1"
_FORMATS: dict[str, tuple[type, type]] = {
    FORMAT_MAE: (MAEConfig, MaskedAutoencoderViT),
    FORMAT_CLASSIFIER: (ClassifierConfig, VisionTransformerClassifier),
}
# Position embeddings with one cls slot in front of a square patch grid.
_POS_EMBED_KEYS = ("pos_embed", "decoder_pos_embed")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointFormatError(ValueError):
    """A file or dict is not a state dict we can load; the message names the source and key."""


@dataclass
class LoadReport:
    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)
    # Classifier head tensors whose class count differs: left as initialised, never loaded.
    skipped: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.unexpected and not self.skipped

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        if self.missing:
            lines.append(f"missing ({len(self.missing)}, left as initialised): {_summarise(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected ({len(self.unexpected)}, ignored): {_summarise(self.unexpected)}")
        for line in self.resampled:
            lines.append(f"resampled {line}")
        for line in self.skipped:
            lines.append(f"skipped {line}")
        return "\n".join(lines)


def _summarise(keys: list[str]) -> str:
    """['decoder_blocks.0.norm1.weight', ...] -> 'decoder_blocks.* (96), decoder_norm.* (2), mask_token'."""
    counts = Counter(key.split(".")[0] for key in keys)
    parts = []
    for root, count in counts.items():
        parts.append(root if count == 1 and root in keys else f"{root}.* ({count})")
    return ", ".join(parts)


# -- reading --------------------------------------------------------------------------------
def _torch_load(path: str | os.PathLike) -> object:
    """torch.load with weights_only=True from a local path or an fsspec URL.

    argparse.Namespace is allowed because the release's training checkpoints pickle their
    command line as one; it holds plain values and runs no code on load.
    """
    with open_for_read(path) as f, torch.serialization.safe_globals([argparse.Namespace]):
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointFormatError(
                f"{path}: holds objects other than tensors and plain data, refused by "
                f"torch.load(weights_only=True): {err}"
            ) from err


def _unwrap(obj: object, source: str) -> Mapping[str, torch.Tensor]:
    """The state dict inside a checkpoint: obj["model"], obj["state_dict"] or obj itself."""
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{source}: expected a state dict or a checkpoint dict, got {type(obj).__name__}")
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not obj:
        raise CheckpointFormatError(f"{source}: holds no tensors")
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            top = ", ".join(map(str, list(obj)[:8]))
            raise CheckpointFormatError(
                f"{source}: key {key!r} holds a {type(value).__name__}, not a tensor; this is not a "
                f"state dict, nor a checkpoint with one under 'model' or 'state_dict' (keys: {top})"
            )
    return obj


def _strip_wrappers(key: str) -> str:
    """'module._orig_mod.blocks.0._orig_mod.attn...' -> 'blocks.0.attn...' (DDP, torch.compile)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key.replace("._orig_mod.", ".")


def _bare(model: nn.Module) -> nn.Module:
    """The model inside DDP/FSDP-style (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None:
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _filter(obj: object, model: nn.Module, source: str) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    state: dict[str, torch.Tensor] = {}
    for key, value in _unwrap(obj, source).items():
        name = _strip_wrappers(key)
        if name in state:
            raise CheckpointFormatError(f"{source}: keys {key!r} and another both map to {name!r}")
        state[name] = value
    expected = _bare(model).state_dict()
    resampled, skipped = [], []
    for name, value in list(state.items()):
        if name not in expected or value.shape == expected[name].shape:
            continue  # keys the model lacks are kept and reported as unexpected
        want = expected[name].shape
        if name in _POS_EMBED_KEYS and value.ndim == 3 and value.shape[-1] == want[-1]:
            side = math.isqrt(want[1] - 1)
            if side * side != want[1] - 1:
                raise CheckpointFormatError(f"{source}: cannot resample {name!r}: the model's grid is not square")
            try:
                state[name] = resample_pos_embed(value, (side, side))
            except ValueError as err:
                raise CheckpointFormatError(f"{source}: cannot resample {name!r}: {err}") from err
            old = math.isqrt(value.shape[1] - 1)
            resampled.append(f"{name}: {old}x{old} -> {side}x{side} patches")
            continue
        if name.split(".")[0] == "head":
            # A fine-tuned checkpoint's head for another class count: start the head fresh, as
            # the release's fine-tuning does, and say so.
            del state[name]
            skipped.append(f"{name}: {tuple(value.shape)} in the checkpoint, {tuple(want)} in the model")
            continue
        raise CheckpointFormatError(
            f"{source}: {name!r} has shape {tuple(value.shape)} but the model expects {tuple(want)} "
            "(a different architecture or patch size?)"
        )
    return state, resampled, skipped


def filter_state_dict(state_dict_or_ckpt: object, model: nn.Module, *, source: str = "<state dict>") -> dict:
    """A foreign state dict or checkpoint made ready for `model.load_state_dict(strict=False)`.

    Unwraps {"model": ...} / {"state_dict": ...}, strips `module.` / `_orig_mod.`, resamples
    `pos_embed` / `decoder_pos_embed` to the model's grid. Keys the model lacks are kept, so
    load_state_dict reports them; `head.*` tensors sized for another class count are left out
    (`load_pretrained` reports them as skipped); any other shape mismatch raises CheckpointFormatError.
    """
    return _filter(state_dict_or_ckpt, model, source)[0]


def load_pretrained(model: nn.Module, path_or_dict: object, *, strict: bool = False) -> LoadReport:
    """Load an official (full or encoder-only), timm or maectl checkpoint into `model`, in place.

    path_or_dict: a local path, an fsspec URL (s3://...), or an already loaded dict.
    strict=True raises, before changing the model, unless every key matches both ways.
    """
    if isinstance(path_or_dict, Mapping):
        source, obj = "<dict>", path_or_dict
    else:
        source, obj = str(path_or_dict), _torch_load(path_or_dict)
    bare = _bare(model)
    state, resampled, skipped = _filter(obj, bare, source)
    expected = bare.state_dict()
    skipped_keys = {line.split(":")[0] for line in skipped}
    report = LoadReport(
        source=source,
        loaded=[k for k in state if k in expected],
        missing=[k for k in expected if k not in state and k not in skipped_keys],
        unexpected=[k for k in state if k not in expected],
        resampled=resampled,
        skipped=skipped,
    )
    if strict and not report.complete:
        raise CheckpointFormatError(f"{source}: strict load failed\n{report}")
    bare.load_state_dict(state, strict=False)
    return report


# -- export to timm -------------------------------------------------------------------------
def export_timm_encoder(model: nn.Module, global_pool: str = "token") -> dict[str, torch.Tensor]:
    """The encoder as a state dict for timm's VisionTransformer(..., qkv_bias=True,
    global_pool=global_pool, num_classes=0), loadable with strict=True.

    Decoder keys, mask tokens and any head are dropped (timm also takes a dict holding
    `mask_token` for DINOv2). For global_pool="avg" timm has `fc_norm` and no `norm`; the MAE's
    final norm is exported as `fc_norm`. That is a starting point, not the same function: timm
    then normalises the mean of the un-normed tokens, while `extract_features(pool="avg")`
    averages normed tokens. The release's fine-tuning starts fc_norm fresh instead.
    """
    if global_pool not in ("token", "avg"):
        raise ValueError(f"unknown global_pool {global_pool!r}; choose 'token' or 'avg'")
    out = {}
    for name, tensor in _bare(model).state_dict().items():
        root = name.split(".")[0]
        if root in ("mask_token", "encoder_mask_token", "head") or root.startswith("decoder_"):
            continue
        out[name] = tensor.detach().clone()
    has_norm, has_fc_norm = "norm.weight" in out, "fc_norm.weight" in out
    if global_pool == "avg" and has_norm:
        out = {("fc_" + k if k.split(".")[0] == "norm" else k): v for k, v in out.items()}
    elif global_pool == "token" and has_fc_norm:
        raise ValueError("this model pools by average (it has fc_norm, no norm); export it with global_pool='avg'")
    return out


# -- our own checkpoint file ------------------------------------------------------------------
def save_model(model: nn.Module, path: str | os.PathLike) -> None:
    """Write {"model": state_dict, "model_config": dict, "format": str} to a path or fsspec URL.

    Only tensors and plain data, so `torch.load(weights_only=True)` reads it; written atomically.
    """
    bare = _bare(model)
    for fmt, (_, model_type) in _FORMATS.items():
        if type(bare) is model_type:
            break
    else:
        raise TypeError(f"save_model handles MaskedAutoencoderViT and VisionTransformerClassifier, not {type(bare).__name__}")
    payload = {
        "model": {k: v.detach().cpu() for k, v in bare.state_dict().items()},
        "model_config": bare.config.to_dict(),
        "format": fmt,
    }
    with open_for_write(path) as f:
        torch.save(payload, f)


def load_model(path_or_ckpt: object) -> nn.Module:
    """The model saved by `save_model` (a MaskedAutoencoderViT or VisionTransformerClassifier), on CPU."""
    if isinstance(path_or_ckpt, Mapping):
        source, ckpt = "<dict>", path_or_ckpt
    else:
        source, ckpt = str(path_or_ckpt), _torch_load(path_or_ckpt)
    fmt = ckpt.get("format") if isinstance(ckpt, Mapping) else None
    if fmt not in _FORMATS:
        raise CheckpointFormatError(
            f"{source}: format {fmt!r} is not a maectl model file ({', '.join(_FORMATS)}); "
            "for official or timm weights build the model and call load_pretrained"
        )
    config_type, model_type = _FORMATS[fmt]
    try:
        config = config_type(**ckpt["model_config"])
    except (TypeError, KeyError) as err:
        raise CheckpointFormatError(f"{source}: bad 'model_config': {err}") from err
    # Built on the meta device: initialising weights that are overwritten at once is wasted time.
    with torch.device("meta"):
        model = model_type(config)
    state = _unwrap(ckpt, source)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise CheckpointFormatError(f"{source}: does not match its own model_config: {err}") from err
    return model
