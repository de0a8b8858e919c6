"""Patch masking strategies. Convention (the paper's): mask value 1 = removed, 0 = kept.

Every strategy reduces to a per-sample score ("noise"): patches are sorted by it ascending
and the first `num_keep` are kept. Random masking uses uniform noise, exactly as the
official code, so two implementations fed the same noise keep the same patches.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from .models.config import MASK_STRATEGIES as STRATEGIES  # noqa: E402 — plain data


@dataclass(frozen=True)
class MaskedIndices:
    """ids_keep (N, K), ids_restore (N, L), mask (N, L) float with 1 = removed, and
    ids_removed (N, L - K): the removed patches in shuffle order, the only ones the loss reads."""

    ids_keep: torch.Tensor
    ids_restore: torch.Tensor
    mask: torch.Tensor
    ids_removed: torch.Tensor


def num_kept(num_patches: int, mask_ratio: float) -> int:
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return int(num_patches * (1 - mask_ratio))


def masking_from_noise(noise: torch.Tensor, mask_ratio: float) -> MaskedIndices:
    """noise (N, L): smaller = kept. Returns the kept ids, the restoring permutation and the mask."""
    n, length = noise.shape
    keep = num_kept(length, mask_ratio)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(n, length, device=noise.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return MaskedIndices(ids_keep, ids_restore, mask, ids_shuffle[:, keep:])


def random_noise(n: int, length: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, L) uniform noise; the paper's per-sample uniform random masking."""
    return torch.rand(n, length, device=device, generator=generator)


def grid_noise(n: int, grid: tuple[int, int], device=None) -> torch.Tensor:
    """(N, L) scores that keep the top-left patch of every 2x2 cell (the paper's grid-wise sampling)."""
    rows = torch.arange(grid[0], device=device)[:, None]
    cols = torch.arange(grid[1], device=device)[None, :]
    kept = ((rows % 2 == 0) & (cols % 2 == 0)).reshape(-1)
    # Tie-break by position so the order is deterministic.
    score = (~kept).float() + torch.linspace(0, 0.5, kept.numel(), device=device)
    return score.unsqueeze(0).expand(n, -1).contiguous()


def block_noise(
    n: int,
    grid: tuple[int, int],
    mask_ratio: float,
    device=None,
    generator: torch.Generator | None = None,
    min_block_patches: int = 4,
) -> torch.Tensor:
    """(N, L) scores for block-wise masking (BEiT-style random rectangles, aspect 0.3..3.3).

    Rectangles are drawn until they cover the target count; the exact count is then set by
    the uniform tie-break noise, so every sample keeps the same number of patches.
    """
    gh, gw = grid
    length = gh * gw
    target = length - num_kept(length, mask_ratio)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
    rng = random.Random(seed)
    blocks = torch.zeros(n, gh, gw)
    log_aspect = (math.log(0.3), math.log(1 / 0.3))
    for i in range(n):
        covered = 0
        for _attempt in range(100):
            if covered >= target:
                break
            area = rng.uniform(min_block_patches, max(min_block_patches, target - covered))
            aspect = math.exp(rng.uniform(*log_aspect))
            h = min(gh, max(1, round(math.sqrt(area * aspect))))
            w = min(gw, max(1, round(math.sqrt(area / aspect))))
            top, left = rng.randint(0, gh - h), rng.randint(0, gw - w)
            blocks[i, top : top + h, left : left + w] = 1
            covered = int(blocks[i].sum())
    tie_break = torch.rand(n, length, generator=generator) * 0.5
    return (blocks.reshape(n, length) + tie_break).to(device)


def make_noise(
    strategy: str,
    n: int,
    grid: tuple[int, int],
    mask_ratio: float,
    device=None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Scores (N, L) for the named strategy; see `masking_from_noise`."""
    if strategy == "random":
        return random_noise(n, grid[0] * grid[1], device=device, generator=generator)
    if strategy == "grid":
        return grid_noise(n, grid, device=device)
    if strategy == "block":
        return block_noise(n, grid, mask_ratio, device=device, generator=generator)
    raise ValueError(f"unknown mask_strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
