"""Masked autoencoder with a ViT encoder and a lightweight transformer decoder (He et al., 2021).

forward = encode (visible patches only) -> decode (with mask tokens) -> loss on masked patches.
State-dict names and shapes are those of the official release, so its checkpoints load as is.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..masking import MaskedIndices, make_noise, masking_from_noise
from ..patches import patchify
from ..pos_embed import resample_pos_embed, sincos_2d
from ..targets import make_target, target_dim, target_to_patches
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
        patch_dim = c.patch_size**2 * c.in_chans
        self.decoder_pred = nn.Linear(c.decoder_embed_dim, target_dim(c.reconstruction_target, patch_dim, c.pca_components))
        if c.reconstruction_target == "pca":
            # The PCA target's basis, estimated from data before the first step (`set_pca_basis`).
            # Buffers, so checkpoints carry it; `decoder_` names, so encoder exports drop it.
            self.register_buffer("decoder_pca_mean", torch.zeros(patch_dim))
            self.register_buffer("decoder_pca_basis", torch.zeros(c.pca_components, patch_dim))
            self._pca_checked = False
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

    def forward_decoder(
        self, latent: torch.Tensor, masked: MaskedIndices, grid: tuple[int, int], only_removed: bool = False
    ) -> torch.Tensor:
        """latent (N, 1 + K, D) -> per-patch predictions (N, L, T) in target space (T = p*p*C, or
        the PCA components). only_removed: predict just the removed patches, (N, L - K, T) in the
        order of `masked.ids_removed`: all that the loss on masked patches reads."""
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
        x = x[:, 1:]  # (N, L, Dd); norm and head act per token, so dropping tokens first is exact
        if only_removed:
            x = torch.gather(x, 1, masked.ids_removed.unsqueeze(-1).expand(-1, -1, dim))  # (N, L - K, Dd)
        return self.decoder_pred(self.decoder_norm(x))

    # -- targets -------------------------------------------------------------------------
    def _pca(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.config.reconstruction_target != "pca":
            return None
        if not self._pca_checked:
            # Checked once (one host sync): an all-zero basis would train towards zeros silently.
            if not bool(self.decoder_pca_basis.any()):
                raise RuntimeError("target 'pca': the PCA basis is not estimated yet; call set_pca_basis() "
                                   "(the pretraining task does, from the first training batches)")
            self._pca_checked = True
        return self.decoder_pca_mean, self.decoder_pca_basis

    @torch.no_grad()
    def set_pca_basis(self, mean: torch.Tensor, basis: torch.Tensor) -> None:
        """mean (P,), basis (K, P) from `targets.pca_from_moments`."""
        self.decoder_pca_mean.copy_(mean)
        self.decoder_pca_basis.copy_(basis)
        self._pca_checked = False

    def reconstruction_target(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, T): raw or per-patch normalised pixels, or PCA coefficients."""
        return make_target(self.config.reconstruction_target, patchify(imgs, self.config.patch_size), self._pca())

    def pred_to_patches(self, pred: torch.Tensor, imgs: torch.Tensor) -> torch.Tensor:
        """pred (N, L, T) in target space -> pixels (N, L, p*p*C), for pictures; `imgs` (N, C, H, W)
        gives each patch's mean and std, which the norm-pixel target removed."""
        patches = patchify(imgs.float(), self.config.patch_size)
        return target_to_patches(self.config.reconstruction_target, pred.float(), patches, self._pca())

    def forward_loss(
        self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, ids_removed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """imgs (N, C, H, W), pred (N, L, T), mask (N, L) -> scalar loss: per-patch MSE, averaged
        over the masked patches (or all, with loss_on_visible).

        With `ids_removed` (N, M), pred is (N, M, T) for just those patches; their per-patch errors
        are put back in place, so the sum runs over the same (N, L) layout in the same order as
        with full predictions, and the loss is the same to the bit.
        """
        # The target and the loss stay in float32 under autocast: per-patch variances of
        # bf16 pixels are too coarse for the norm-pix target.
        patches = patchify(imgs.float(), self.config.patch_size)
        if ids_removed is not None:
            patches = torch.gather(patches, 1, ids_removed.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        target = make_target(self.config.reconstruction_target, patches, self._pca())
        per_patch = (pred.float() - target).pow(2).mean(dim=-1)  # (N, L) or (N, M)
        if ids_removed is not None:
            per_patch = torch.zeros_like(mask, dtype=per_patch.dtype).scatter(1, ids_removed, per_patch)
        if self.config.loss_on_visible:
            return per_patch.mean()
        return (per_patch * mask).sum() / mask.sum()

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None,
        *, full_pred: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs (N, C, H, W) -> (loss scalar, pred (N, L, T) in target space, mask (N, L) with 1 = removed).

        full_pred=False (training): the decoder head runs on the removed patches only, and pred
        is (N, L - K, T) in the order of their ids; the loss is the same. With loss_on_visible
        every patch is predicted either way.
        """
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        latent, masked = self.forward_encoder(imgs, ratio, noise)
        grid = self.patch_embed.grid(imgs.shape[-2], imgs.shape[-1])
        only_removed = not full_pred and not self.config.loss_on_visible
        pred = self.forward_decoder(latent, masked, grid, only_removed=only_removed)
        loss = self.forward_loss(imgs, pred, masked.mask, masked.ids_removed if only_removed else None)
        return loss, pred, masked.mask

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
