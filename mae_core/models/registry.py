"""Models by descriptive name. Each entry is an `MAEConfig`; `build_model` applies overrides."""

from __future__ import annotations

import dataclasses
import difflib

from .mae import MAEConfig, MaskedAutoencoderViT

# name -> encoder/decoder shape. Decoders follow the paper's default (512-d, 8 blocks, 16 heads)
# for the paper's sizes; the 32x32 variants are small enough for CPU tests and the demo.
_REGISTRY: dict[str, MAEConfig] = {
    "mae_vit_tiny_patch16": MAEConfig(embed_dim=192, depth=12, num_heads=3),
    "mae_vit_small_patch16": MAEConfig(embed_dim=384, depth=12, num_heads=6),
    "mae_vit_base_patch16": MAEConfig(embed_dim=768, depth=12, num_heads=12),
    "mae_vit_large_patch16": MAEConfig(embed_dim=1024, depth=24, num_heads=16),
    "mae_vit_huge_patch14": MAEConfig(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
    "mae_vit_tiny_patch4_32": MAEConfig(
        img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3,
        decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4,
    ),
    "mae_vit_micro_patch4_32": MAEConfig(
        img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4,
        decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4,
    ),
}

_FIELDS = {f.name for f in dataclasses.fields(MAEConfig)}


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_config(name: str, **overrides) -> MAEConfig:
    """The registered config with overrides applied; unknown names or keys raise with a suggestion."""
    if name not in _REGISTRY:
        hint = difflib.get_close_matches(name, _REGISTRY, n=1)
        raise KeyError(f"unknown model {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else f"; known: {', '.join(list_models())}"))
    unknown = set(overrides) - _FIELDS
    if unknown:
        key = sorted(unknown)[0]
        hint = difflib.get_close_matches(key, _FIELDS, n=1)
        raise TypeError(f"unknown model argument {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
    return dataclasses.replace(_REGISTRY[name], **overrides)


def build_model(name: str, **overrides) -> MaskedAutoencoderViT:
    """Build a registered MAE, e.g. build_model("mae_vit_base_patch16", norm_pix_loss=True)."""
    return MaskedAutoencoderViT(model_config(name, **overrides))
