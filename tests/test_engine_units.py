"""Pure unit tests of the engine's parts: config validation, schedule, checkpoints, kNN, LARS."""

import math

import pytest
import torch

from mae_core.engine.checkpointing import CheckpointError, CheckpointManager, load_checkpoint
from mae_core.engine.config import load_run_config
from mae_core.engine.knn import knn_top1
from mae_core.engine.lars import LARS
from mae_core.engine.schedule import lr_at, scaled_lr
from mae_core.structured import ConfigError


def _config(**sections):
    base = {"output_dir": "/tmp/x", "model": {"name": "mae_vit_micro_patch4_32"}, "data": {"url": "/tmp/data", "img_size": 32}}
    base.update(sections)
    return base


def test_valid_config_round_trips():
    cfg = load_run_config(_config(train={"epochs": 3}, optim={"betas": [0.9, 0.95]}))
    assert cfg.train.epochs == 3 and cfg.optim.betas == (0.9, 0.95)
    again = load_run_config(cfg.to_dict())
    assert again == cfg


@pytest.mark.parametrize(
    "sections, key, fragment",
    [
        ({"train": {"epoch": 3}}, "train.epoch", "did you mean 'train.epochs'"),
        ({"train": {"epochs": "ten"}}, "train.epochs", "expected an integer"),
        ({"train": {"epochs": 0}}, "train.epochs", "must be in [1, 100000], got 0"),
        ({"optim": {"name": "adam"}}, "optim.name", "did you mean 'adamw'"),
        ({"optim": {"weight_decay": -1}}, "optim.weight_decay", "must be in [0, 100]"),
        ({"model": {"name": "mae_vit_base_patch61"}}, "model.name", "did you mean"),
        ({"model": {"name": "mae_vit_micro_patch4_32", "mask_ratoi": 0.5}}, "model.mask_ratoi", "did you mean 'model.mask_ratio'"),
        ({"task": "pretrian"}, "task", "did you mean 'pretrain'"),
    ],
)
def test_bad_configs_name_the_key(sections, key, fragment):
    with pytest.raises(ConfigError) as info:
        load_run_config(_config(**sections))
    assert info.value.key == key
    assert fragment in str(info.value)


def test_missing_required_section():
    with pytest.raises(ConfigError) as info:
        load_run_config({"output_dir": "/tmp/x"})
    assert info.value.key == "data"


def test_linear_scaling_and_schedule_shape():
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)
    kw = dict(lr=1.0, min_lr=0.1, warmup_epochs=2, epochs=10)
    assert lr_at(0.0, **kw) == 0.0
    assert lr_at(1.0, **kw) == pytest.approx(0.5)
    assert lr_at(2.0, **kw) == pytest.approx(1.0)
    assert lr_at(6.0, **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(10.0, **kw) == pytest.approx(0.1)
    values = [lr_at(2 + 8 * t / 50, **kw) for t in range(51)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_checkpoints_are_atomic_pruned_and_weights_only(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep_last=2, keep_every_epochs=1)
    for step in (1, 2, 3, 4):
        manager.save({"model": {"w": torch.full((2,), float(step))}, "position": {"step": step}}, step, milestone=(step == 2))
    steps = [c.step for c in manager.list()]
    assert steps == [2, 3, 4]  # last two + the milestone
    # A crash mid-write leaves only a temp file, never a partial file under the final name.
    (tmp_path / "checkpoints" / "checkpoint-000000005.pt.tmp-dead").write_bytes(b"partial")
    latest = manager.latest()
    assert latest.step == 4
    state = torch.load(latest.path, weights_only=True)
    assert torch.equal(state["model"]["w"], torch.full((2,), 4.0))
    assert load_checkpoint(latest.path)["position"]["step"] == 4


def test_foreign_checkpoint_is_refused(tmp_path):
    path = tmp_path / "official.pth"
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 8)}}, path)
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(str(path))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing.pt"))


def test_unwritable_output_is_reported_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match="not writable"):
        CheckpointManager(str(blocker / "out")).check_writable()


def test_knn_separates_clusters_and_random_features_do_not():
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=gen) * 5
    labels = torch.arange(4).repeat_interleave(50)
    feats = centers[labels] + torch.randn(200, 16, generator=gen)
    test_labels = torch.arange(4).repeat_interleave(10)
    test = centers[test_labels] + torch.randn(40, 16, generator=gen)
    assert knn_top1(feats, labels, test, test_labels, k=10) > 95
    noise = torch.randn(200, 16, generator=gen)
    assert knn_top1(noise, labels, torch.randn(40, 16, generator=gen), test_labels, k=10) < 60


def test_lars_fits_a_linear_problem():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=gen)
    w_true = torch.randn(8, 1, generator=gen)
    y = x @ w_true
    layer = torch.nn.Linear(8, 1)
    opt = LARS(layer.parameters(), lr=1.0, momentum=0.9, trust_coefficient=0.01)
    first = None
    for _ in range(300):
        loss = torch.nn.functional.mse_loss(layer(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first * 0.05 and math.isfinite(loss.item())
