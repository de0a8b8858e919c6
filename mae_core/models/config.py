"""The model's configuration and the registry of named architectures: plain data, no torch.

Validating an experiment (`maectl show`, a dry-run, a refused override) reads only this module, so
it never pays for importing torch. The modules that build networks (`mae.py`, `classifier.py`)
import `MAEConfig` from here.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import asdict, dataclass

from ..structured import ConfigError, bounded, from_dict

MASK_STRATEGIES = ("random", "block", "grid")
# Table 1d's reconstruction targets. "dvae" keeps the knob's slot: it needs DALL-E's tokenizer
# weights, which cannot be fetched here, so a config naming it is refused.
TARGETS = ("pixel", "norm_pixel", "pca", "dvae")


@dataclass(frozen=True, kw_only=True)
class MAEConfig:
    """Constructor arguments of `MaskedAutoencoderViT`; stored in every checkpoint so that a file
    says what it is."""

    img_size: int = bounded(224, ge=1, le=8192)
    patch_size: int = bounded(16, ge=1, le=1024)
    in_chans: int = bounded(3, ge=1, le=64)
    embed_dim: int = bounded(1024, ge=1, le=65536)
    depth: int = bounded(24, ge=1, le=1024)
    num_heads: int = bounded(16, ge=1, le=1024)
    decoder_embed_dim: int = bounded(512, ge=1, le=65536)
    decoder_depth: int = bounded(8, ge=1, le=1024)
    decoder_num_heads: int = bounded(16, ge=1, le=1024)
    mlp_ratio: float = bounded(4.0, gt=0, le=64)
    norm_pix_loss: bool = False
    mask_ratio: float = bounded(0.75, ge=0, lt=1)
    mask_strategy: str = "random"
    mask_token_in_encoder: bool = False
    loss_on_visible: bool = False
    fused_attn: bool = True
    # What the decoder predicts per masked patch (mae_core/targets.py). `norm_pix_loss: true`, the
    # older spelling, still means "norm_pixel"; `reconstruction_target` resolves the two.
    target: str = "pixel"
    # Principal components kept by target "pca" (the paper keeps 96 of a 16x16x3 patch's 768).
    pca_components: int = bounded(96, ge=1, le=65536)

    @property
    def reconstruction_target(self) -> str:
        return "norm_pixel" if self.norm_pix_loss else self.target

    def __post_init__(self):
        if self.img_size % self.patch_size:
            raise ConfigError("patch_size", f"must divide img_size ({self.img_size}) into whole patches, got {self.patch_size}")
        if self.mask_strategy not in MASK_STRATEGIES:
            close = difflib.get_close_matches(str(self.mask_strategy), MASK_STRATEGIES, n=1)
            raise ConfigError("mask_strategy", f"must be one of {', '.join(map(repr, MASK_STRATEGIES))}, got {self.mask_strategy!r}"
                              + (f"; did you mean {close[0]!r}?" if close else ""))
        if self.target not in TARGETS:
            close = difflib.get_close_matches(str(self.target), TARGETS, n=1)
            raise ConfigError("target", f"must be one of {', '.join(map(repr, TARGETS))}, got {self.target!r}"
                              + (f"; did you mean {close[0]!r}?" if close else ""))
        if self.target == "dvae":
            raise ConfigError("target", "'dvae' (Table 1d's DALL-E tokens) needs the DALL-E dVAE tokenizer's weights, "
                                        "which maectl neither ships nor can fetch; use 'pixel', 'norm_pixel' or 'pca'")
        if self.norm_pix_loss and self.target not in ("pixel", "norm_pixel"):
            raise ConfigError("norm_pix_loss", f"true means target 'norm_pixel', which conflicts with target {self.target!r}; set one of them")
        patch_dim = self.patch_size**2 * self.in_chans
        if self.target == "pca" and self.pca_components > patch_dim:
            raise ConfigError("pca_components", f"{self.pca_components} is more than a patch has dimensions "
                                                f"({self.patch_size}x{self.patch_size}x{self.in_chans} = {patch_dim})")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ConfigError("mask_ratio", f"must be in [0, 1), got {self.mask_ratio}")
        for dim, heads in (("embed_dim", "num_heads"), ("decoder_embed_dim", "decoder_num_heads")):
            if getattr(self, dim) % getattr(self, heads):
                raise ConfigError(heads, f"must divide {dim} ({getattr(self, dim)}) into equal heads, got {getattr(self, heads)}")

    def to_dict(self) -> dict:
        return asdict(self)


# name -> encoder/decoder shape. Decoders follow the paper's default (512-d, 8 blocks, 16 heads)
# for the paper's sizes; the 32x32 variants are small enough for CPU tests and the demo.
REGISTRY: dict[str, MAEConfig] = {
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

MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(MAEConfig))


def list_models() -> list[str]:
    return sorted(REGISTRY)


def model_config(name: str, **overrides) -> MAEConfig:
    """The registered config with overrides applied, validated like an experiment file's section.
    Raises ConfigError naming the key (`name`, or the overridden field)."""
    return ModelConfig.from_plain({"name": name, **overrides}).arch


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """An experiment's `model:` section: a registered architecture by name, any `MAEConfig` field
    overridden beside it (`model: {name: mae_vit_large_patch16, mask_ratio: 0.9}`)."""

    name: str
    arch: MAEConfig

    @classmethod
    def from_plain(cls, data, prefix: str = "") -> "ModelConfig":
        key = (lambda k: f"{prefix}.{k}" if prefix else k)
        if not isinstance(data, dict):
            raise ConfigError(prefix, f"expected a mapping with `name:` and model arguments, got {data!r}")
        name = data.get("name")
        if name is None:
            raise ConfigError(key("name"), f"is required: one of {', '.join(list_models())}")
        if not isinstance(name, str):
            raise ConfigError(key("name"), f"expected a model name (one of {', '.join(list_models())}), got {name!r}")
        if name not in REGISTRY:
            close = difflib.get_close_matches(name, REGISTRY, n=1)
            raise ConfigError(key("name"), f"unknown model {name!r}" + (f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(list_models())}"))
        overrides = {k: v for k, v in data.items() if k != "name"}
        for k in overrides:
            if k not in MODEL_FIELDS:
                close = difflib.get_close_matches(str(k), MODEL_FIELDS, n=1)
                raise ConfigError(key(str(k)), "unknown model argument" + (f"; did you mean {key(close[0])!r}?" if close else ""))
        arch = from_dict(MAEConfig, {**REGISTRY[name].to_dict(), **overrides}, prefix=prefix)
        return cls(name=name, arch=arch)

    def to_plain(self) -> dict:
        return {"name": self.name, **self.arch.to_dict()}

    def overrides(self) -> dict:
        """The fields that differ from the registered architecture."""
        base = REGISTRY[self.name].to_dict()
        return {k: v for k, v in self.arch.to_dict().items() if base[k] != v}
