"""Models by descriptive name. The registry itself is plain data (`config.REGISTRY`); this module
adds `build_model`, which needs torch."""

from __future__ import annotations

from .config import REGISTRY, MAEConfig, list_models, model_config

__all__ = ["REGISTRY", "MAEConfig", "build_model", "list_models", "model_config"]


def build_model(name: str, **overrides):
    """Build a registered MAE, e.g. build_model("mae_vit_base_patch16", norm_pix_loss=True)."""
    from .mae import MaskedAutoencoderViT

    return MaskedAutoencoderViT(model_config(name, **overrides))
