"""Bad input, many ways: every bad override or file given to a real `maectl submit` is refused before
anything is recorded, written or started. Exit 2, one line that names the file and the dotted key
(or the malformed argument) in our words, an empty job store and an empty output root.

The cases run in-process through `orchestrator.cli.main` (the same code path as the console
script, without paying a Python start per case); a subprocess test below checks the console
script itself for a sample.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.locations import PROJECT_ROOT

EXPERIMENT = "pretrain-vit-tiny-demo"
SOURCE = "jobs/pretrain-vit-tiny-demo.yaml"
PYTHON_WORDS = ("not supported between", "object is not", "NoneType", "has no attribute", "Traceback", "unhashable",
                "invalid literal", "takes no arguments", "unexpected keyword")

NON_FINITE = ["1e400", "-1e400", ".nan", ".inf", "-.inf"]
FLOAT_KEYS = [
    "optim.base_lr", "optim.lr", "optim.min_lr", "optim.warmup_epochs", "optim.weight_decay", "optim.clip_grad",
    "optim.momentum", "optim.layer_decay", "model.mask_ratio", "model.mlp_ratio", "monitor.knn_temperature",
    "finetune.drop_path", "finetune.mixup", "finetune.label_smoothing", "data.retry_delay_s", "data.random_erasing",
    "data.eval_crop_ratio", "checkpoint.every_minutes", "resources.mem_gb",
]
INT_KEYS = [
    "train.epochs", "train.accum_iter", "train.log_every", "train.max_steps", "data.batch_size", "data.img_size",
    "data.num_workers", "monitor.knn_k", "monitor.knn_every_epochs", "checkpoint.keep_last", "checkpoint.every_steps",
    "resources.nodes", "resources.cpus_per_task", "resources.time_limit_min", "model.depth", "model.embed_dim",
    "slurm.max_requeues", "ray.max_failures", "finetune.num_classes",
]
OUT_OF_RANGE = [
    ("train.epochs", "1e23"), ("train.epochs", "0"), ("train.epochs", "-5"), ("data.batch_size", "1e20"),
    ("data.batch_size", "0"), ("data.batch_size", "100000000000000000000"), ("monitor.knn_k", "-5"),
    ("monitor.knn_k", "0"), ("resources.nodes", "0"), ("resources.nodes", "-1"), ("resources.mem_gb", "-4"),
    ("resources.mem_gb", "0"), ("resources.cpus_per_task", "0"), ("optim.base_lr", "-1e-3"), ("optim.base_lr", "1e9"),
    ("optim.weight_decay", "-0.05"), ("optim.warmup_epochs", "-1"), ("optim.betas", "[0.9, 1.5]"),
    ("optim.betas", "[-0.1, 0.95]"), ("optim.momentum", "1.0"), ("optim.layer_decay", "0"), ("optim.layer_decay", "1.5"),
    ("model.mask_ratio", "1.0"), ("model.mask_ratio", "-0.1"), ("model.mask_ratio", "75"), ("model.patch_size", "0"),
    ("model.patch_size", "5"), ("model.depth", "0"), ("model.num_heads", "3"), ("model.img_size", "-32"),
    ("data.crop_scale", "[1.0, 0.2]"), ("data.crop_scale", "[0.2, 1.5]"), ("data.crop_scale", "[0, 1]"),
    ("data.crop_ratio", "[1.33, 0.75]"), ("data.eval_crop_ratio", "0"), ("data.eval_crop_ratio", "1.5"),
    ("data.random_erasing", "2"), ("data.std", "[0.2, 0.2, 0]"), ("finetune.drop_path", "1.0"),
    ("finetune.label_smoothing", "-0.1"), ("train.seed", "-1"), ("train.seed", "1e30"), ("slurm.max_requeues", "-1"),
    ("slurm.signal_delay_s", "-30"), ("ray.max_failures", "-2"), ("global_batch", "0"), ("global_batch", "-4096"),
    ("checkpoint.keep_last", "0"), ("checkpoint.every_minutes", "0"), ("monitor.recon_images", "0"),
    ("data.randaug_magnitude", "31"), ("data.prefetch_factor", "0"), ("resources.gpus_per_node", "-1"),
    ("resources.time_limit_min", "0"),
]
WRONG_TYPE = [
    ("model.mask_ratio", "abc"), ("model.mask_ratio", "[0.5]"), ("model.mask_ratio", "{a: 1}"), ("model.mask_ratio", "true"),
    ("model.name", "123"), ("model.name", "[a, b]"), ("model.name", "nosuchmodel"), ("model.name", "null"),
    ("model.mask_strategy", "checkerboard"), ("model.norm_pix_loss", "maybe"), ("model.norm_pix_loss", "1"),
    ("train.epochs", "ten"), ("train.epochs", "[1]"), ("train.epochs", "2.5"), ("train.epochs", "true"),
    ("train.precision", "fp8"), ("train.device", "tpu"), ("train.compile", "1"), ("data.batch_size", "'64'"),
    ("data.batch_size", "{n: 64}"), ("data.hflip", "sometimes"), ("data.mean", "[1, 2]"), ("data.mean", "0.5"),
    ("data.crop_scale", "0.2"), ("data.crop_scale", "[0.2]"), ("data.crop_scale", "[a, b]"), ("optim.betas", "0.9"),
    ("optim.betas", "[0.9]"), ("optim.betas", "[0.9, 0.95, 0.99]"), ("optim.betas", "{b1: 0.9}"), ("optim.name", "sgd"),
    ("task", "pretrian"), ("task", "[pretrain]"), ("backend", "kubernetes"), ("backend", "3"),
    ("resources.nodes", "two"), ("resources.nodes", "[1]"), ("resources.partition", "[gpu]"), ("resources.sbatch_options", "[x]"),
    ("resources.sbatch_options", "{'--exclusive': true}"), ("resources.sbatch_options", "{x: [1]}"), ("tracking.enabled", "sometimes"),
    ("tracking.uri", "[a]"), ("slurm.setup", "module load x"), ("slurm.srun_args", "{a: 1}"), ("ray.autoscaling", "2"),
    ("checkpoint.resume", "[a]"), ("monitor.knn_k", "'20'"), ("finetune.global_pool", "max"), ("output_dir", "[a]"),
    ("data", "5"), ("data", "[a]"), ("optim", "fast"), ("model", "mae_vit_base_patch16"), ("resources", "[1, 2]"),
    ("sweep", "[1, 2]"), ("sweep", "{model.mask_ratio: 0.5}"), ("pipeline", "[a]"), ("pipeline.then", "{a: 1}"),
    ("description", "[a]"), ("global_batch", "big"), ("train.epochs", "1: 2"), ("train.epochs", "- 1"),
]
UNKNOWN_KEYS = [
    ("nosuch", "1"), ("train.nosuch", "1"), ("model.nosuch", "1"), ("model.mask_ratoi", "0.5"), ("optim.lrr", "1e-3"),
    ("data.batchsize", "8"), ("resources.gpus", "8"), ("slurm.partition", "gpu"), ("ray.nodes", "2"), ("tracking.url", "x"),
    ("checkpoint.every", "5"), ("monitor.knn", "1"), ("finetune.mixup_alpha", "0.8"), ("pipeline.next", "[a]"),
]
DATA_URLS = ["s3://", "s3:///x", "ftp://host/x", "http://host/shards", "gs://bucket/x", "file://relative/x",
             "/nonexistent/shards", "file:///nonexistent/shards", "''", "null", "hdfs://nn/x", "s3:/bucket/x"]
YAML_TAGS = ["!!python/object/apply:os.system ['true']", "!!python/name:os.system", "!!binary aGVsbG8=", "!custom 3",
             "!!set {a, b}", "!!timestamp 2001-12-14", "!!str 5", "!!float 1"]
MALFORMED = ["train.epochs", "=5", "train..epochs=5", ".epochs=3", "train.=3", "train.epochs.x=3", "data.url.sub=x",
             "model.mask_ratio=[0.5", "model.mask_ratio={a"]


def _override_cases():
    for key, value in itertools.product(FLOAT_KEYS, NON_FINITE):
        yield f"{key}={value}", key
    for key in INT_KEYS:
        yield f"{key}=1e400", key
        yield f"{key}=.nan", key
    for key, value in (*OUT_OF_RANGE, *WRONG_TYPE, *UNKNOWN_KEYS):
        yield f"{key}={value}", key
    for url in DATA_URLS:
        yield f"data.url={url}", "data.url"
    for tag in YAML_TAGS:
        yield f"train.epochs={tag}", "train.epochs="
    for item in MALFORMED:
        yield item, item


OVERRIDE_CASES = list(_override_cases())

BAD_FILES = {
    "duplicate-key": ("train:\n  epochs: 2\n  epochs: 3\n", "duplicate key"),
    "invalid-yaml": ("train: [1, 2\n", "invalid YAML"),
    "top-level-list": ("- a\n- b\n", "mapping"),
    "unknown-section": ("extends: {demo}\ntrian:\n  epochs: 2\n", "trian"),
    "tag-in-file": ("extends: {demo}\ntrain:\n  epochs: !!python/object/apply:os.system ['true']\n", "YAML tags"),
    "binary-tag": ("extends: {demo}\ndata:\n  url: !!binary aGVsbG8=\n", "YAML tags"),
    "missing-extends": ("extends: no-such-base\n", "extends"),
    "extends-number": ("extends: 5\n", "extends"),
    "inf-lr": ("extends: {demo}\noptim:\n  base_lr: 1e400\n", "optim.base_lr"),
    "backwards-crop": ("extends: {demo}\ndata:\n  crop_scale: [1.0, 0.2]\n", "data.crop_scale"),
    "model-not-mapping": ("extends: {demo}\nmodel: 7\n", "model"),
    "no-data-url": ("extends: base/pretrain.yaml\ndata:\n  url: null\n", "data.url"),
    "bad-ftp-url": ("extends: {demo}\ndata:\n  url: ftp://host/x\n", "data.url"),
    "bad-sweep": ("extends: {demo}\nsweep:\n  model.mask_ratio: []\n", "sweep.model.mask_ratio"),
    "bad-pipeline": ("extends: {demo}\npipeline:\n  then: [{experiment: 3}]\n", "pipeline.then[0]"),
}


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "MAECTL_", "RAY_ADDRESS")) or k == "MAECTL_SITE"}
    env.update({"MAECTL_HOME": str(tmp_path / "home"), "MAECTL_OUTPUT_ROOT": str(tmp_path / "out"),
                "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/never/mlflow.db"})
    return env


def _assert_nothing_left(tmp_path: Path) -> None:
    """No job or sweep in the store (the store's file may exist), nothing under the output root,
    no MLflow store, no per-job folder."""
    store = tmp_path / "home" / "jobs.db"
    if store.exists():
        with sqlite3.connect(store) as db:
            for table in ("jobs", "sweeps"):
                rows = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                assert rows == 0, f"refused input recorded {rows} row(s) in {table}"
    for folder in ("home", "out", "never"):
        leftovers = sorted(p.relative_to(tmp_path) for p in (tmp_path / folder).rglob("*")) if (tmp_path / folder).exists() else []
        leftovers = [p for p in leftovers if not p.name.startswith("jobs.db")]
        assert not leftovers, f"refused input left {leftovers}"


def _refused(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, f"{argv}: exit {code}, stderr {err!r}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, f"{argv}: refused without a word"
    assert not any(words in err for words in PYTHON_WORDS), f"{argv}: Python's words, not ours: {err}"
    return err


def test_at_least_200_cases():
    assert len(OVERRIDE_CASES) + len(BAD_FILES) >= 200


@pytest.mark.parametrize("item, key", OVERRIDE_CASES, ids=[c[0] for c in OVERRIDE_CASES])
def test_bad_override_is_refused(item, key, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(PROJECT_ROOT)
    for name in [k for k in os.environ if (k.startswith(("AWS_", "MLFLOW_", "MAECTL_")) and k != "MAECTL_SITE") or k == "RAY_ADDRESS"]:
        monkeypatch.delenv(name)
    for name, value in _env(tmp_path).items():
        monkeypatch.setenv(name, value)
    err = _refused(capsys, ["submit", EXPERIMENT, "--backend", "local", item])
    assert len(err.splitlines()) == 1, err
    assert key in err, f"{item}: the message does not name {key!r}: {err}"
    if "=" in item and not item.startswith("=") and ".." not in item and not item.split("=", 1)[0].endswith("."):
        assert SOURCE in err or "override" in err, f"{item}: the message names no file: {err}"
    _assert_nothing_left(tmp_path)


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_is_refused(name, tmp_path, monkeypatch, capsys):
    text, fragment = BAD_FILES[name]
    demo = PROJECT_ROOT / SOURCE
    path = tmp_path / "jobs" / f"{name}.yaml"
    path.parent.mkdir()
    path.write_text(text.replace("{demo}", str(demo)))
    monkeypatch.chdir(PROJECT_ROOT)
    for key, value in _env(tmp_path).items():
        monkeypatch.setenv(key, value)
    err = _refused(capsys, ["submit", str(path), "--backend", "local"])
    assert fragment in err, err
    assert path.name in err or "extends" in err, err
    (tmp_path / "jobs").joinpath(path.name).unlink()
    (tmp_path / "jobs").rmdir()
    _assert_nothing_left(tmp_path)


@pytest.mark.parametrize("argv", [
    ["submit", EXPERIMENT, "--backend", "slurm", "optim.base_lr=1e400"],
    ["submit", EXPERIMENT, "optim.base_lr=1e400", "--backend", "slurm"],
    ["sweep", EXPERIMENT, "--dry-run", "model.mask_ratio=0.5,abc"],
    ["show", EXPERIMENT, "--backend", "ray", "train.epochs=ten"],
])
def test_console_script_refuses_with_flags_anywhere(argv, tmp_path):
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", *argv], cwd=PROJECT_ROOT, env=_env(tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("maectl: error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    _assert_nothing_left(tmp_path)


def test_flags_and_overrides_in_any_order_mean_the_same(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(PROJECT_ROOT)
    for key, value in _env(tmp_path).items():
        monkeypatch.setenv(key, value)
    outputs = []
    for argv in (["show", EXPERIMENT, "--backend", "slurm", "train.epochs=3", "resources.partition=gpu"],
                 ["show", EXPERIMENT, "train.epochs=3", "--backend", "slurm", "resources.partition=gpu"],
                 ["show", "--backend", "slurm", EXPERIMENT, "train.epochs=3", "resources.partition=gpu"]):
        assert main(argv) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] == outputs[2]
    assert "partition: gpu" in outputs[0] and "epochs: 3" in outputs[0]
