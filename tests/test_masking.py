"""Masking invariants: the paper's argsort convention, and each strategy's shape and ratio."""

import pytest
import torch

from mae_core.masking import STRATEGIES, make_noise, masking_from_noise, num_kept

GRID = (8, 8)
LENGTH = GRID[0] * GRID[1]


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9])
def test_keep_count_and_mask_convention(ratio):
    noise = torch.rand(4, LENGTH, generator=torch.Generator().manual_seed(0))
    m = masking_from_noise(noise, ratio)
    keep = int(LENGTH * (1 - ratio))
    assert m.ids_keep.shape == (4, keep)
    assert m.ids_restore.shape == m.mask.shape == (4, LENGTH)
    assert (m.mask.sum(dim=1) == LENGTH - keep).all()
    # 1 = removed: the kept ids are exactly the zeros of the mask, in original patch order.
    assert (torch.gather(m.mask, 1, m.ids_keep) == 0).all()
    # Small noise = kept (the paper's convention).
    kept_noise = torch.gather(noise, 1, m.ids_keep)
    removed_noise = noise.masked_fill(m.mask == 0, float("inf"))
    if keep and keep < LENGTH:
        assert (kept_noise.max(dim=1).values < removed_noise.min(dim=1).values).all()


def test_ids_restore_inverts_the_shuffle():
    noise = torch.rand(3, LENGTH)
    m = masking_from_noise(noise, 0.75)
    ids_shuffle = torch.argsort(noise, dim=1)
    restored = torch.gather(ids_shuffle, 1, m.ids_restore)
    assert torch.equal(restored, torch.arange(LENGTH).expand(3, -1))
    assert torch.equal(ids_shuffle[:, : m.ids_keep.shape[1]], m.ids_keep)


def test_same_noise_same_mask_and_matches_the_paper_formula():
    noise = torch.rand(2, LENGTH)
    a, b = masking_from_noise(noise, 0.75), masking_from_noise(noise.clone(), 0.75)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.ids_keep, b.ids_keep)
    # The paper's recipe written out independently: binary mask 1 = removed, unshuffled.
    keep = int(LENGTH * 0.25)
    ids_shuffle = torch.argsort(noise, dim=1)
    expected = torch.ones(2, LENGTH)
    expected[:, :keep] = 0
    expected = torch.gather(expected, 1, torch.argsort(ids_shuffle, dim=1))
    assert torch.equal(a.mask, expected)


def test_generator_makes_random_noise_reproducible():
    a = make_noise("random", 2, GRID, 0.75, generator=torch.Generator().manual_seed(7))
    b = make_noise("random", 2, GRID, 0.75, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_strategy_shapes_and_ratio(strategy, ratio):
    noise = make_noise(strategy, 3, GRID, ratio, generator=torch.Generator().manual_seed(1))
    assert noise.shape == (3, LENGTH)
    m = masking_from_noise(noise, ratio)
    assert (m.mask.sum(dim=1) == LENGTH - num_kept(LENGTH, ratio)).all()


def test_grid_keeps_one_patch_per_2x2_cell():
    m = masking_from_noise(make_noise("grid", 2, GRID, 0.75), 0.75)
    kept = (m.mask == 0).reshape(2, *GRID)
    cells = kept.reshape(2, GRID[0] // 2, 2, GRID[1] // 2, 2).sum(dim=(2, 4))
    assert (cells == 1).all()
    assert kept[:, 0::2, 0::2].all()


def test_block_masks_contiguous_regions():
    # Block masking removes rectangles: removed patches have mostly removed neighbours, far
    # more than under uniform random masking at the same ratio.
    gen = torch.Generator().manual_seed(3)
    grid = (14, 14)

    def removed_neighbour_fraction(strategy):
        m = masking_from_noise(make_noise(strategy, 16, grid, 0.5, generator=gen), 0.5)
        removed = m.mask.reshape(16, *grid)
        right = (removed[:, :, 1:] * removed[:, :, :-1]).sum()
        down = (removed[:, 1:, :] * removed[:, :-1, :]).sum()
        return float((right + down) / removed.sum())

    assert removed_neighbour_fraction("block") > removed_neighbour_fraction("random") + 0.4


def test_bad_ratio_rejected():
    with pytest.raises(ValueError):
        masking_from_noise(torch.rand(1, LENGTH), 1.0)


def test_ids_removed_are_the_masked_patches_in_shuffle_order():
    noise = torch.rand(3, LENGTH, generator=torch.Generator().manual_seed(1))
    m = masking_from_noise(noise, 0.75)
    keep = num_kept(LENGTH, 0.75)
    assert m.ids_removed.shape == (3, LENGTH - keep)
    assert torch.equal(m.ids_removed, torch.argsort(noise, dim=1)[:, keep:])
    assert (torch.gather(m.mask, 1, m.ids_removed) == 1).all()
    # Kept and removed ids together are every patch once.
    assert torch.equal(torch.cat([m.ids_keep, m.ids_removed], 1).sort(1).values, torch.arange(LENGTH).expand(3, -1))
