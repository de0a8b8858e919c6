"""Masked autoencoder with a ViT encoder and a lightweight transformer decoder (He et al., 2021).

forward = encode (visible patches only) -> decode (with mask tokens) -> loss on masked patches.
State-dict names and shapes are those of the official release, so its checkpoints load as is.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..masking import MaskedIndices, make_noise, masking_from_noise
from ..patches import masked_mse, normalize_patches, patchify
from ..pos_embed import resample_pos_embed, sincos_2d
from .config import MAEConfig
from .vit import Block, PatchEmbed, init_patch_embed, init_vit_weights, layer_norm


def _sincos_parameter(dim: int, grid: int) -> nn.Parameter:
    # Fixed, yet a Parameter (requires_grad=False) so the state dict matches the release.
    return nn.Parameter(sincos_2d(dim, grid, grid, cls_token=True), requires_grad=False)


class MaskedAutoencoderViT(nn.Module):
    def __init__(self, config: MAEConfig):
        super().__init__()
        self.config = c = config
        grid = c.img_size // c.patch_size

        # Encoder: the ViT that later gets fine-tuned.
        self.patch_embed = PatchEmbed(c.patch_size, c.in_chans, c.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = _sincos_parameter(c.embed_dim, grid)
        self.blocks = nn.ModuleList(
            Block(c.embed_dim, c.num_heads, c.mlp_ratio, fused_attn=c.fused_attn) for _ in range(c.depth)
        )
        self.norm = layer_norm(c.embed_dim)
        if c.mask_token_in_encoder:
            # Table 1's slow variant: the encoder sees every position, masked ones as this token.
            self.encoder_mask_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))

        # Decoder: used only for pretraining.
        self.decoder_embed = nn.Linear(c.embed_dim, c.decoder_embed_dim)
        if not c.mask_token_in_encoder:
            # The slow variant's decoder already gets every position from the encoder; an unused
            # parameter would make DDP demand find_unused_parameters=True.
            self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_embed_dim))
        self.decoder_pos_embed = _sincos_parameter(c.decoder_embed_dim, grid)
        self.decoder_blocks = nn.ModuleList(
            Block(c.decoder_embed_dim, c.decoder_num_heads, c.mlp_ratio, fused_attn=c.fused_attn)
            for _ in range(c.decoder_depth)
        )
        self.decoder_norm = layer_norm(c.decoder_embed_dim)
        self.decoder_pred = nn.Linear(c.decoder_embed_dim, c.patch_size**2 * c.in_chans)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_patch_embed(self.patch_embed)
        for token in (self.cls_token, getattr(self, "mask_token", None), getattr(self, "encoder_mask_token", None)):
            if token is not None:
                nn.init.normal_(token, std=0.02)
        self.apply(init_vit_weights)

    # -- helpers -------------------------------------------------------------------------
    def _pos_embed_for(self, pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The stored embedding, or one resampled for an input whose patch grid differs."""
        if pos_embed.shape[1] - 1 == grid[0] * grid[1]:
            return pos_embed
        return resample_pos_embed(pos_embed, grid)

    def masking(self, n: int, grid: tuple[int, int], mask_ratio: float, noise: torch.Tensor | None, device) -> MaskedIndices:
        if noise is None:
            noise = make_noise(self.config.mask_strategy, n, grid, mask_ratio, device=device)
        elif noise.shape != (n, grid[0] * grid[1]):
            raise ValueError(f"noise must have shape {(n, grid[0] * grid[1])}, got {tuple(noise.shape)}")
        return masking_from_noise(noise, mask_ratio)

    # -- the three stages ----------------------------------------------------------------
    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, MaskedIndices]:
        """(N, C, H, W) -> latent (N, 1 + K, D) of the visible patches (or 1 + L with mask tokens)."""
        grid = self.patch_embed.grid(imgs.shape[-2], imgs.shape[-1])
        pos_embed = self._pos_embed_for(self.pos_embed, grid)
        x = self.patch_embed(imgs) + pos_embed[:, 1:]  # (N, L, D)
        n, length, dim = x.shape
        masked = self.masking(n, grid, mask_ratio, noise, x.device)
        if self.config.mask_token_in_encoder:
            tokens = self.encoder_mask_token.to(x.dtype) + pos_embed[:, 1:]
            x = torch.where(masked.mask.unsqueeze(-1).bool(), tokens.expand(n, -1, -1), x)
        else:
            x = torch.gather(x, 1, masked.ids_keep.unsqueeze(-1).expand(-1, -1, dim))  # (N, K, D)
        cls = (self.cls_token + pos_embed[:, :1]).expand(n, -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), masked

    def forward_decoder(self, latent: torch.Tensor, masked: MaskedIndices, grid: tuple[int, int]) -> torch.Tensor:
        """latent (N, 1 + K, D) -> per-patch pixel predictions (N, L, p*p*C)."""
        x = self.decoder_embed(latent)  # (N, 1 + K, Dd)
        n, _, dim = x.shape
        length = masked.ids_restore.shape[1]
        if not self.config.mask_token_in_encoder:
            # Append mask tokens after the visible tokens, then undo the shuffle.
            fill = self.mask_token.to(x.dtype).expand(n, length + 1 - x.shape[1], -1)
            patches = torch.cat([x[:, 1:], fill], dim=1)  # (N, L, Dd) in shuffled order
            patches = torch.gather(patches, 1, masked.ids_restore.unsqueeze(-1).expand(-1, -1, dim))
            x = torch.cat([x[:, :1], patches], dim=1)
        x = x + self._pos_embed_for(self.decoder_pos_embed, grid)
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:]

    def reconstruction_target(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p*p*C): raw or per-patch normalised pixels."""
        target = patchify(imgs, self.config.patch_size)
        return normalize_patches(target) if self.config.norm_pix_loss else target

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """imgs (N, C, H, W), pred (N, L, p*p*C), mask (N, L) -> scalar loss."""
        # The target and the loss stay in float32 under autocast: per-patch variances of
        # bf16 pixels are too coarse for the norm-pix target.
        target = self.reconstruction_target(imgs.float())
        return masked_mse(pred.float(), target, None if self.config.loss_on_visible else mask)

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs (N, C, H, W) -> (loss scalar, pred (N, L, p*p*C), mask (N, L) with 1 = removed)."""
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        latent, masked = self.forward_encoder(imgs, ratio, noise)
        grid = self.patch_embed.grid(imgs.shape[-2], imgs.shape[-1])
        pred = self.forward_decoder(latent, masked, grid)
        return self.forward_loss(imgs, pred, masked.mask), pred, masked.mask

    # -- downstream ----------------------------------------------------------------------
    @torch.no_grad()
    def extract_features(self, imgs: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        """(N, C, H, W) -> (N, D) encoder features of unmasked images.

        pool "cls" (or "token"): the normed cls token, what timm's `global_pool="token"` returns.
        pool "avg" (or "mean"): the mean of the normed patch tokens.
        """
        if pool not in ("cls", "token", "avg", "mean"):
            raise ValueError(f"unknown pool {pool!r}; choose 'cls' or 'avg'")
        latent, _ = self.forward_encoder(imgs, mask_ratio=0.0, noise=_identity_noise(imgs, self))
        return latent[:, 0] if pool in ("cls", "token") else latent[:, 1:].mean(dim=1)


def _identity_noise(imgs: torch.Tensor, model: MaskedAutoencoderViT) -> torch.Tensor:
    grid = model.patch_embed.grid(imgs.shape[-2], imgs.shape[-1])
    length = grid[0] * grid[1]
    return torch.arange(length, device=imgs.device, dtype=torch.float32).expand(imgs.shape[0], -1)
