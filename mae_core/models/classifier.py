"""The ViT encoder with a classification head, for fine-tuning and linear probing.

Parameter names are the MAE encoder's (`patch_embed`, `cls_token`, `pos_embed`, `blocks`) plus
`norm` (cls-token pooling) or `fc_norm` (global average pooling) and `head`, i.e. the layout of
the release's fine-tuned checkpoints and of timm's `VisionTransformer`. Pretrained MAE weights
enter through `mae_core.weights.load_pretrained`, which reports the head and `fc_norm` missing
and the decoder keys unexpected.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from ..pos_embed import resample_pos_embed, sincos_2d
from .config import MAEConfig
from .vit import Block, PatchEmbed, init_patch_embed, init_vit_weights, layer_norm

GLOBAL_POOLS = ("token", "avg")


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig:
    """Constructor arguments; stored in every checkpoint so that a file says what it is."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    # "avg": mean of patch tokens then fc_norm (the paper's fine-tune recipe);
    # "token": normed cls token (the paper's linear probe).
    global_pool: str = "avg"
    drop_path: float = 0.0
    # Linear probe: BatchNorm1d without affine before the linear head (the paper's Appendix A.2).
    head_batchnorm: bool = False
    # The release initialises the head with trunc-normal std 2e-5 (fine-tune) or 0.01 (linear probe).
    head_init_std: float = 2e-5
    fused_attn: bool = True

    def __post_init__(self):
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        if self.global_pool not in GLOBAL_POOLS:
            raise ValueError(f"unknown global_pool {self.global_pool!r}; choose one of {', '.join(GLOBAL_POOLS)}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")

    def to_dict(self) -> dict:
        return asdict(self)


class VisionTransformerClassifier(nn.Module):
    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = c = config
        grid = c.img_size // c.patch_size
        self.patch_embed = PatchEmbed(c.patch_size, c.in_chans, c.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        # Starts as the fixed sin-cos (what every MAE checkpoint holds) and, as in the release's
        # fine-tuning, is trained from there; freeze it with requires_grad_(False) if wanted.
        self.pos_embed = nn.Parameter(sincos_2d(c.embed_dim, grid, grid, cls_token=True))
        # Stochastic depth grows linearly with depth, 0 at the first block.
        rates = [c.drop_path * i / max(c.depth - 1, 1) for i in range(c.depth)]
        self.blocks = nn.ModuleList(
            Block(c.embed_dim, c.num_heads, c.mlp_ratio, drop_path=rate, fused_attn=c.fused_attn) for rate in rates
        )
        if c.global_pool == "avg":
            self.fc_norm = layer_norm(c.embed_dim)
        else:
            self.norm = layer_norm(c.embed_dim)
        self.head = self._make_head()
        self.reset_parameters()

    def _make_head(self) -> nn.Module:
        c = self.config
        if c.num_classes == 0:
            return nn.Identity()
        linear = nn.Linear(c.embed_dim, c.num_classes)
        if c.head_batchnorm:
            # Keys head.0.* / head.1.*, as the release's linear-probe checkpoints.
            return nn.Sequential(nn.BatchNorm1d(c.embed_dim, affine=False, eps=1e-6), linear)
        return linear

    def reset_parameters(self) -> None:
        init_patch_embed(self.patch_embed)
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(init_vit_weights)
        linear = self.head[-1] if isinstance(self.head, nn.Sequential) else self.head
        if isinstance(linear, nn.Linear):
            nn.init.trunc_normal_(linear.weight, std=self.config.head_init_std)
            nn.init.zeros_(linear.bias)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed"}

    def forward_tokens(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, 1 + L, D) block outputs, before the final norm."""
        grid = self.patch_embed.grid(imgs.shape[-2], imgs.shape[-1])
        pos_embed = self.pos_embed
        if pos_embed.shape[1] - 1 != grid[0] * grid[1]:
            pos_embed = resample_pos_embed(pos_embed, grid)
        x = self.patch_embed(imgs) + pos_embed[:, 1:]  # (N, L, D)
        cls = (self.cls_token + pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return x

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, D) pooled features, the input of the head."""
        x = self.forward_tokens(imgs)
        if self.config.global_pool == "avg":
            return self.fc_norm(x[:, 1:].mean(dim=1))
        return self.norm(x)[:, 0]

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, num_classes) logits (or (N, D) features when num_classes == 0)."""
        return self.head(self.forward_features(imgs))


def classifier_from_mae(
    mae_config: MAEConfig,
    num_classes: int,
    global_pool: str = "avg",
    drop_path: float = 0.0,
    **overrides,
) -> VisionTransformerClassifier:
    """A classifier whose encoder matches the MAE's, ready for `load_pretrained`.

    `overrides` set any other `ClassifierConfig` field, e.g. img_size=448 (the position
    embedding is then resampled on load) or head_batchnorm=True for a linear probe.
    """
    fields = dict(
        img_size=mae_config.img_size,
        patch_size=mae_config.patch_size,
        in_chans=mae_config.in_chans,
        embed_dim=mae_config.embed_dim,
        depth=mae_config.depth,
        num_heads=mae_config.num_heads,
        mlp_ratio=mae_config.mlp_ratio,
        fused_attn=mae_config.fused_attn,
        num_classes=num_classes,
        global_pool=global_pool,
        drop_path=drop_path,
    )
    fields.update(overrides)
    return VisionTransformerClassifier(ClassifierConfig(**fields))
