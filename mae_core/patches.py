"""Images <-> patch sequences, and the normalized-pixel target. Pure tensor functions."""

from __future__ import annotations

import torch

NORM_PIX_EPS = 1e-6


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, L, p*p*C); each patch vector is ordered (row, col, channel)."""
    n, c, h, w = imgs.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {p}")
    gh, gw = h // p, w // p
    x = imgs.reshape(n, c, gh, p, gw, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, gh * gw, p * p * c)


def unpatchify(x: torch.Tensor, patch_size: int, grid: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """(N, L, p*p*C) -> (N, C, gh*p, gw*p); inverse of `patchify`."""
    n = x.shape[0]
    p = patch_size
    gh, gw = grid
    x = x.reshape(n, gh, gw, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, channels, gh * p, gw * p)


def patch_stats(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L, P) -> mean (N, L, 1), std (N, L, 1) with unbiased variance + eps, as the paper's code."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True, unbiased=True)
    return mean, (var + NORM_PIX_EPS) ** 0.5


def normalize_patches(target: torch.Tensor) -> torch.Tensor:
    """(N, L, P) -> per-patch standardised pixels, the paper's best reconstruction target."""
    mean, std = patch_stats(target)
    return (target - mean) / std


def denormalize_patches(pred: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Undo `normalize_patches`: pred (N, L, P) in per-patch standard units -> pixels, using the
    mean and std of each patch of `reference` (N, L, P), the patchified original image."""
    mean, std = patch_stats(reference)
    return pred * std + mean


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-patch MSE averaged over the patch vector, then over patches where mask == 1.

    pred, target: (N, L, P); mask: (N, L) with 1 = included, or None for all patches.
    """
    per_patch = (pred - target).pow(2).mean(dim=-1)
    if mask is None:
        return per_patch.mean()
    return (per_patch * mask).sum() / mask.sum()
