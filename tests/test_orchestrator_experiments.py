"""Experiment files: finding, extends + overrides merging, strict validation with file + key."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from orchestrator import experiments
from orchestrator.errors import UsageError
from orchestrator.experiments import ExperimentError, find_experiments, resolve
from orchestrator.locations import PROJECT_ROOT

PAPER_JOBS = ["pretrain-vit-b-800ep", "pretrain-vit-b-1600ep", "pretrain-vit-l-800ep", "pretrain-vit-l-1600ep",
              "pretrain-vit-h-800ep", "pretrain-vit-h-1600ep", "finetune-vit-b", "finetune-vit-l", "finetune-vit-h",
              "linprobe-vit-b", "linprobe-vit-l", "linprobe-vit-h", "pretrain-vit-tiny-demo"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("MAECTL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MAECTL_OUTPUT_ROOT", str(tmp_path / "out"))
    monkeypatch.delenv("MAECTL_JOBS_PATH", raising=False)
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def jobs(tmp_path, monkeypatch):
    """A private jobs folder searched before the shipped one."""
    folder = tmp_path / "jobs"
    folder.mkdir()
    monkeypatch.setenv("MAECTL_JOBS_PATH", str(folder))
    write(folder, "base/common.yaml", """\
        resources: {nodes: 1, gpus_per_node: 0, tasks_per_node: 2}
        model: {name: mae_vit_micro_patch4_32, norm_pix_loss: true}
        data: {url: /data/demo, img_size: 32, batch_size: 16, num_workers: 0}
        optim: {base_lr: 1.0e-3, betas: [0.9, 0.95]}
        train: {epochs: 5}
        """)
    return folder


# -- the shipped files ---------------------------------------------------------------------------
SHIPPED = sorted(p.stem for p in (PROJECT_ROOT / "jobs").rglob("*.yaml") if "base" not in p.relative_to(PROJECT_ROOT / "jobs").parts)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_job_validates(name):
    resolved = resolve(name)
    res = resolved.spec.resources
    assert res.nodes >= 1 and res.time_limit_min and res.cpus_per_task, "each job names its resources"
    assert resolved.run.data.url, "each job names its data location"
    if resolved.spec.global_batch:
        r = resolved.run
        assert r.data.batch_size * res.world_size * r.train.accum_iter == resolved.spec.global_batch


def test_the_paper_recipes_are_shipped():
    assert set(PAPER_JOBS) <= set(SHIPPED)
    ablations = [n for n in SHIPPED if n.startswith("ablate-")]
    for knob in ("mask-ratio", "decoder-depth", "decoder-width", "mask-token-in-encoder", "target", "aug", "sampling"):
        assert any(knob in n for n in ablations), knob
    assert not any("base" == p for path in find_experiments().values() for p in path.parts[-2:-1]), "bases are not experiments"


@pytest.mark.parametrize("size, model, batch, accum", [("b", "mae_vit_base_patch16", 128, 1), ("l", "mae_vit_large_patch16", 64, 1), ("h", "mae_vit_huge_patch14", 32, 2)])
@pytest.mark.parametrize("epochs", [800, 1600])
def test_pretrain_recipe(size, model, batch, accum, epochs):
    r = resolve(f"pretrain-vit-{size}-{epochs}ep")
    run = r.run
    assert run.model.name == model and run.train.epochs == epochs
    assert r.spec.global_batch == 4096 and run.data.batch_size == batch and run.train.accum_iter == accum
    assert run.optim.name == "adamw" and run.optim.base_lr == 1.5e-4 and run.optim.betas == (0.9, 0.95)
    assert run.optim.weight_decay == 0.05 and run.optim.warmup_epochs == 40
    assert run.model.arch.norm_pix_loss is True and run.model.arch.mask_ratio == 0.75
    assert run.data.crop_scale == (0.2, 1.0)


@pytest.mark.parametrize("size, epochs, blr, decay, drop", [("b", 100, 5e-4, 0.65, 0.1), ("l", 50, 1e-3, 0.75, 0.2), ("h", 50, 1e-3, 0.75, 0.3)])
def test_finetune_recipe(size, epochs, blr, decay, drop):
    r = resolve(f"finetune-vit-{size}")
    run = r.run
    assert run.task == "finetune" and r.spec.global_batch == 1024
    assert (run.train.epochs, run.optim.base_lr, run.optim.layer_decay, run.finetune.drop_path) == (epochs, blr, decay, drop)
    assert run.optim.betas == (0.9, 0.999) and run.optim.warmup_epochs == 5
    f = run.finetune
    assert (f.mixup, f.cutmix, f.label_smoothing, f.global_pool) == (0.8, 1.0, 0.1, "avg")
    assert run.checkpoint.init_from


@pytest.mark.parametrize("size", ["b", "l", "h"])
def test_linprobe_recipe(size):
    r = resolve(f"linprobe-vit-{size}")
    run = r.run
    assert run.task == "linprobe" and run.optim.name == "lars" and run.optim.base_lr == 0.1
    assert run.optim.weight_decay == 0 and r.spec.global_batch == 16384
    assert run.train.epochs == 90 and run.optim.warmup_epochs == 10


def test_demo_job_is_tiny_and_local(tmp_path):
    r = resolve("pretrain-vit-tiny-demo")
    assert r.spec.backend == "local" and r.spec.resources.world_size == 1 and r.spec.resources.gpus == 0
    assert r.run.model.name in ("mae_vit_micro_patch4_32", "mae_vit_tiny_patch4_32")
    assert r.run.data.url == str(tmp_path / "out" / "datasets" / "demo") and r.uses_demo_data
    assert r.run.monitor.knn_every_epochs and r.run.monitor.recon_every_epochs
    assert r.spec.tracking.uri is None  # default: local SQLite under the output root


# -- extends and overrides ----------------------------------------------------------------------
def test_extends_deep_merges_and_overrides_win(jobs):
    write(jobs, "mid.yaml", """\
        extends: base/common.yaml
        optim: {base_lr: 2.0e-3}
        train: {max_steps: 7}
        """)
    write(jobs, "exp/child.yaml", """\
        extends: [../mid.yaml]
        description: a child
        data: {batch_size: 8}
        """)
    r = resolve("child", ["train.epochs=2", "model.mask_ratio=0.9", "optim.betas=[0.8, 0.9]"])
    run = r.run
    assert run.optim.base_lr == 2e-3  # mid over base
    assert run.data.batch_size == 8 and run.data.img_size == 32  # child over mid, siblings kept
    assert run.train.epochs == 2 and run.train.max_steps == 7  # override over files
    assert run.model.name == "mae_vit_micro_patch4_32" and run.model.overrides() == {"norm_pix_loss": True, "mask_ratio": 0.9}
    assert run.optim.betas == (0.8, 0.9)
    assert r.spec.description == "a child" and r.spec.resources.world_size == 2
    assert run.output_dir == f"{r.output_root}/child/<handle>"


def test_extends_by_job_name_and_list_order(jobs):
    write(jobs, "a.yaml", "extends: base/common.yaml\ntrain: {epochs: 11}\n")
    write(jobs, "b.yaml", "extends: base/common.yaml\ntrain: {epochs: 22}\noptim: {base_lr: 5.0e-4}\n")
    write(jobs, "c.yaml", "extends: [b, a]\n")
    r = resolve("c")
    # Each base is resolved whole, then merged in list order: `a` (with what it inherits) wins.
    assert r.run.train.epochs == 11 and r.run.optim.base_lr == 1e-3
    write(jobs, "d.yaml", "extends: [base/common.yaml, b]\ntrain: {max_steps: 3}\n")
    assert resolve("d").run.optim.base_lr == 5e-4


def test_extends_cycle_is_an_error(jobs):
    write(jobs, "x.yaml", "extends: y.yaml\n")
    write(jobs, "y.yaml", "extends: x.yaml\n")
    with pytest.raises(ExperimentError, match="circular"):
        resolve("x")


def test_placeholders_and_handles(jobs):
    write(jobs, "p.yaml", "extends: base/common.yaml\noutput_dir: ${output_root}/custom/${experiment}-${handle}\n")
    r = resolve("p", make_handle=lambda backend: f"{backend}-abc123", check_data=False)
    assert r.handle == "local-abc123" and r.run.output_dir == f"{r.output_root}/custom/p-local-abc123"


def test_global_batch_derives_accumulation(jobs):
    write(jobs, "g.yaml", "extends: base/common.yaml\nglobal_batch: 128\n")
    r = resolve("g")
    assert r.run.train.accum_iter == 4  # 16 per rank x 2 ranks x 4
    assert any("accum_iter 4" in n for n in r.notes)


# -- validation messages: file + key ----------------------------------------------------------
@pytest.mark.parametrize("overrides, key, words", [
    (["trian.epochs=3"], "trian", "did you mean 'train'"),
    (["train.epoch=3"], "train.epoch", "did you mean 'train.epochs'"),
    (["model.mask_ratoi=0.5"], "model.mask_ratoi", "did you mean 'model.mask_ratio'"),
    (["train.epochs=abc"], "train.epochs", "expected an integer"),
    (["model.mask_ratio=1.5"], "model.mask_ratio", "[0, 1)"),
    (["optim.betas=[0.9]"], "optim.betas", "expected 2 values"),
    (["resources.nodes=0"], "resources.nodes", "must be in [1, 100000], got 0"),
    (["resources.gpus_per_node=8", "resources.tasks_per_node=2"], "resources.tasks_per_node", "one task per GPU"),
    (["global_batch=100"], "global_batch", "not a multiple"),
    (["global_batch=64", "train.accum_iter=3"], "train.accum_iter", "global_batch"),
    (["data.url=null"], "data.url", "required"),
    (["backend=kubernetes"], "backend", "must be one of"),
    (["task=finetune"], "checkpoint.init_from", "pretrained weights"),
    (["model.name=mae_vit_bas_patch16"], "model.name", "did you mean 'mae_vit_base_patch16'"),
])
def test_errors_name_file_and_key(jobs, overrides, key, words):
    path = write(jobs, "e.yaml", "extends: base/common.yaml\n")
    with pytest.raises(ExperimentError) as caught:
        resolve("e", overrides)
    err = caught.value
    assert err.key == key and words in str(err)
    assert Path(err.file).resolve() == path.resolve()
    if any(o.startswith(key.split(".")[0]) for o in overrides):
        assert "set on the command line" in str(err)


def test_errors_from_a_base_name_the_base_file(jobs):
    write(jobs, "base/broken.yaml", "extends: common.yaml\noptim: {weight_decay: -1}\n")
    write(jobs, "uses-broken.yaml", "extends: base/broken.yaml\n")
    with pytest.raises(ExperimentError) as caught:
        resolve("uses-broken")
    assert caught.value.key == "optim.weight_decay"
    assert caught.value.file.endswith("base/broken.yaml") and "inherited by" in str(caught.value)


def test_fewer_shards_than_readers_is_an_error(jobs, demo_shards):
    write(jobs, "s.yaml", f"extends: base/common.yaml\ndata: {{url: {demo_shards}, num_workers: 8}}\n")
    with pytest.raises(ExperimentError) as caught:
        resolve("s")  # 8 training shards < 2 ranks x 8 workers
    assert caught.value.key == "data.num_workers" and "shards" in str(caught.value)
    assert resolve("s", ["data.num_workers=2"]).train_images == 400


def test_yaml_is_loaded_safely_and_strictly(jobs):
    write(jobs, "unsafe.yaml", "extends: base/common.yaml\ndescription: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(UsageError, match="YAML tags are not allowed"):
        resolve("unsafe")
    write(jobs, "dup.yaml", "extends: base/common.yaml\ntrain: {epochs: 1}\ntrain: {epochs: 2}\n")
    with pytest.raises(UsageError, match="duplicate key 'train'"):
        resolve("dup")
    write(jobs, "list.yaml", "- 1\n- 2\n")
    with pytest.raises(UsageError, match="mapping"):
        resolve("list")


def test_unknown_experiment_suggests(jobs):
    write(jobs, "pretrain-small.yaml", "extends: base/common.yaml\n")
    with pytest.raises(UsageError, match="did you mean 'pretrain-small'"):
        resolve("pretrain-smal")
    with pytest.raises(UsageError, match="no such experiment file"):
        resolve("missing/file.yaml")


def test_bad_override_syntax(jobs):
    write(jobs, "o.yaml", "extends: base/common.yaml\n")
    for bad in ("train.epochs", "=3", "train..epochs=3", "train.epochs=[1,"):
        with pytest.raises(UsageError):
            resolve("o", [bad])
    with pytest.raises(UsageError, match="is a value, not a section"):
        resolve("o", ["train.epochs.x=3"])


def test_run_sections_match_the_engine():
    from mae_core.engine import RunConfig

    assert set(experiments._RUN_SECTIONS) == {f.name for f in dataclasses.fields(RunConfig)}


def test_exponent_floats_read_as_numbers(jobs):
    # PyYAML (YAML 1.1) would read 1e-3 as a string; learning rates are written that way.
    write(jobs, "f.yaml", "extends: base/common.yaml\noptim: {base_lr: 3e-4}\n")
    assert resolve("f").run.optim.base_lr == 3e-4
    assert resolve("f", ["optim.base_lr=2e-3", "optim.min_lr=1E-6"]).run.optim.min_lr == 1e-6
