"""Reconstruction targets (the paper's Table 1d): what the decoder predicts for each patch.

pixel       the patch's pixels, (N, L, P) with P = p*p*C, ordered as `patches.patchify`
norm_pixel  each patch standardised by its own mean and std (`patches.normalize_patches`)
pca         the patch's coefficients on the top K principal components of patches drawn from the
            training data, (N, L, K); the paper keeps K = 96. The basis is estimated once, before
            the first step, from patch moments (`patch_moments`, summed over batches and ranks,
            then `pca_from_moments`), and lives in the model as buffers so checkpoints carry it.
dvae        DALL-E tokens; its slot in `TARGETS` is kept, but the tokenizer's weights are not
            available, so `MAEConfig` refuses it.

Pure tensor functions; the moments are float64 so that a covariance summed over millions of
patches keeps its small eigenvalues.
"""

from __future__ import annotations

import torch

from .models.config import TARGETS  # noqa: F401 — plain data, re-exported
from .patches import denormalize_patches, normalize_patches

# How many training images the PCA basis is estimated from (the paper does not say). 768x768
# covariance entries need a few hundred thousand patches to settle; 4096 images of 14x14 patches
# give 800k at 224 px, and the first batches of a run are a fair draw of the augmented data.
PCA_FIT_IMAGES = 4096


def target_dim(target: str, patch_dim: int, pca_components: int) -> int:
    """Length of one patch's target vector: P for pixel targets, K for PCA."""
    return pca_components if target == "pca" else patch_dim


def patch_moments(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """patches (..., P) -> count () , sum (P,), sum of outer products (P, P), all float64.

    Moments add up: sum them over batches (and all-reduce them over ranks) before
    `pca_from_moments`.
    """
    x = patches.reshape(-1, patches.shape[-1]).double()
    return torch.tensor(float(x.shape[0]), dtype=torch.float64), x.sum(0), x.T @ x


def pca_from_moments(
    count: torch.Tensor, total: torch.Tensor, outer: torch.Tensor, components: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """count (), sum (P,), outer (P, P) -> mean (P,), basis (K, P), variance (K,), float32.

    Rows of `basis` are orthonormal principal directions, largest variance first. Each row's
    sign is fixed (its largest-magnitude entry positive) so that the same data gives the same
    basis on every rank and platform.
    """
    n = float(count)
    if n < 2:
        raise ValueError(f"a PCA basis needs at least 2 patches, got {n:g}")
    if components > total.shape[0]:
        raise ValueError(f"cannot keep {components} components of {total.shape[0]}-dim patches")
    mean = total / n
    cov = (outer - n * torch.outer(mean, mean)) / (n - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
    order = torch.argsort(eigenvalues, descending=True)[:components]
    basis = eigenvectors[:, order].T  # (K, P)
    pivot = basis.abs().argmax(dim=1, keepdim=True)
    basis = basis * torch.gather(basis, 1, pivot).sign()
    return mean.float(), basis.float().contiguous(), eigenvalues[order].clamp_min(0).float()


def pca_coefficients(patches: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """patches (N, L, P), mean (P,), basis (K, P) -> coefficients (N, L, K)."""
    return (patches - mean) @ basis.T


def pca_reconstruct(coefficients: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """coefficients (N, L, K) -> patches (N, L, P): the projection onto the kept components."""
    return coefficients @ basis + mean


def make_target(target: str, patches: torch.Tensor, pca: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """patches (N, L, P) -> the named target (N, L, P or K). `pca` = (mean (P,), basis (K, P))."""
    if target == "pixel":
        return patches
    if target == "norm_pixel":
        return normalize_patches(patches)
    if target == "pca":
        if pca is None:
            raise ValueError("target 'pca' needs the basis (mean, basis)")
        return pca_coefficients(patches, *pca)
    raise ValueError(f"unknown reconstruction target {target!r}")


def target_to_patches(
    target: str, pred: torch.Tensor, reference: torch.Tensor, pca: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """Predictions (N, L, P or K) in target space -> pixels (N, L, P), for pictures.

    reference (N, L, P): the patchified original, whose per-patch mean and std undo norm_pixel.
    """
    if target == "pixel":
        return pred
    if target == "norm_pixel":
        return denormalize_patches(pred, reference)
    if target == "pca":
        if pca is None:
            raise ValueError("target 'pca' needs the basis (mean, basis)")
        return pca_reconstruct(pred, *pca)
    raise ValueError(f"unknown reconstruction target {target!r}")
