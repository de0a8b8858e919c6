"""`maectl data shard / verify / demo` and the writer behind them, on real files in tmp_path."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from mae_core.data import DataError, read_manifest
from mae_core.data.demo import make_demo_dataset
from mae_core.data.sources import scan_split
from mae_core.data.verify import verify_split
from mae_core.data.writer import ShardOptions, write_split
from orchestrator.cli import main


@pytest.fixture
def imagefolder(tmp_path):
    """3 classes x 5 train and 2 val images (32 px), plus the kinds of junk real trees hold."""
    src = tmp_path / "src"
    make_demo_dataset(str(src), num_classes=3, train_per_class=5, val_per_class=2, image_size=32, seed=0)
    good = (src / "train" / "n00000000" / "n00000000_0.JPEG").read_bytes()
    (src / "train" / "n00000001" / "truncated.JPEG").write_bytes(good[: len(good) // 2])
    (src / "train" / "n00000001" / "garbage.jpg").write_bytes(b"this is not a jpeg")
    (src / "train" / "n00000002" / "notes.txt").write_text("not an image")
    (src / "train" / "n00000003").mkdir()  # an empty class folder
    return src


def shard_files(root) -> list[str]:
    return sorted(p for p in os.listdir(root) if p.endswith(".tar"))


def test_shard_writes_tars_and_a_manifest_and_names_every_skipped_input(imagefolder, tmp_path, capsys):
    dest = tmp_path / "shards"
    assert main(["data", "shard", str(imagefolder), str(dest), "--maxcount", "4", "--workers", "2"]) == 0
    out = capsys.readouterr().out.replace("\n", " ")
    for name in ("truncated.JPEG", "garbage.jpg", "notes.txt", "n00000003: empty class folder"):
        assert name in out
    assert "4 inputs left out" in out
    # 17 candidate files -> 5 planned shards of <= 4; the 2 undecodable ones are left out at writing.
    assert shard_files(dest) == [f"train-00000{i}.tar" for i in range(5)] + ["val-000000.tar", "val-000001.tar"]
    train = read_manifest(str(dest), "train")
    assert train.classes == ["n00000000", "n00000001", "n00000002", "n00000003"]
    assert train.num_samples == 15 and max(train.counts) == 4
    assert train.sizes == [os.path.getsize(dest / s.name) for s in train.shards]
    assert read_manifest(str(dest), "val").num_samples == 6
    first_shard_labels = [s["cls"] for s in _samples(dest / "train-000000.tar")]
    assert len(set(first_shard_labels)) > 1  # samples are shuffled across shards, not class by class
    assert verify_split(str(dest), "train").ok


def _samples(path) -> list[dict]:
    from mae_core.data.verify import read_shard_samples

    return read_shard_samples(path.read_bytes(), str(path))


def test_rerun_keeps_good_shards_and_rewrites_missing_or_damaged_ones(imagefolder, tmp_path):
    dest = tmp_path / "shards"
    source = scan_split(str(imagefolder), "train")
    options = ShardOptions(maxcount=4, seed=3)
    first, _ = write_split(source, str(dest), options)
    mtimes = {name: os.stat(dest / name).st_mtime_ns for name in shard_files(dest)}

    results = []
    again, _ = write_split(source, str(dest), options, on_shard=results.append)
    assert all(r.reused for r in results) and again.shards == first.shards
    assert {name: os.stat(dest / name).st_mtime_ns for name in shard_files(dest)} == mtimes

    os.remove(dest / "train-000001.tar")
    damaged = dest / "train-000002.tar"
    damaged.write_bytes(damaged.read_bytes()[:3000])
    results.clear()
    repaired, _ = write_split(source, str(dest), options, on_shard=results.append)
    assert sorted(r.index for r in results if not r.reused) == [1, 2]
    assert repaired.shards == first.shards  # identical bytes: fixed mtimes make shards reproducible


def test_a_shard_cut_at_a_member_boundary_is_rewritten(imagefolder, tmp_path):
    """Cut after a whole sample, a shard still reads back as a valid (shorter) tar: the manifest's
    checksum, or without a manifest the missing end-of-archive blocks, say it is not the one written."""
    dest = tmp_path / "shards"
    source = scan_split(str(imagefolder), "train")
    options = ShardOptions(maxcount=4, seed=3)
    first, _ = write_split(source, str(dest), options)
    shard = dest / "train-000000.tar"
    data = shard.read_bytes()
    cut = 512 * (1 + -(-len(_samples(shard)[0]["jpg"]) // 512)) + 1024  # jpg + cls members, whole
    for manifest_kept in (True, False):
        shard.write_bytes(data[:cut])
        assert len(_samples(shard)) < first.shards[0].count  # a shorter tar that reads back
        if not manifest_kept:
            os.remove(dest / "train.manifest.json")
        results = []
        again, _ = write_split(source, str(dest), options, on_shard=results.append)
        assert [r.index for r in results if not r.reused] == [0] and again.shards == first.shards


def test_shards_hold_the_source_pixels_with_restart_markers(imagefolder, tmp_path):
    """JPEGs are stored re-coded with restart markers, losslessly; the manifest records the
    setting, and a re-run with another setting rewrites every shard."""
    decode = pytest.importorskip("mae_core.data.decode")
    if decode._jpegcrop is None:
        pytest.skip("the _jpegcrop extension was not built")
    dest = tmp_path / "shards"
    source = scan_split(str(imagefolder), "train")
    manifest, _ = write_split(source, str(dest), ShardOptions(maxcount=4))
    assert manifest.info["restart_columns"] == 32
    by_key = {image.key: image.path for image in source.images}
    for name in shard_files(dest):
        for sample in _samples(dest / name):
            assert decode._jpegcrop.restart_layout(sample["jpg"]) is not None
            with open(by_key[sample["__key__"]], "rb") as f:
                original = f.read()
            assert decode._jpegcrop.restart_layout(original) is None
            assert Image.open(io.BytesIO(sample["jpg"])).tobytes() == Image.open(io.BytesIO(original)).tobytes()
    results = []
    plain, _ = write_split(source, str(dest), ShardOptions(maxcount=4, restart_columns=0), on_shard=results.append)
    assert plain.info["restart_columns"] == 0 and not any(r.reused for r in results)
    sample = _samples(dest / "train-000000.tar")[0]
    with open(by_key[sample["__key__"]], "rb") as f:
        assert sample["jpg"] == f.read()  # the file's own bytes again


def test_an_interrupted_write_leaves_no_shard_under_its_final_name(imagefolder, tmp_path, monkeypatch):
    from mae_core.data import writer

    calls = []
    real = writer.encode_image

    def dies_on_third(path, *args):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(path, *args)

    monkeypatch.setattr(writer, "encode_image", dies_on_third)
    dest = tmp_path / "shards"
    with pytest.raises(KeyboardInterrupt):
        write_split(scan_split(str(imagefolder), "train"), str(dest), ShardOptions(maxcount=4))
    assert os.listdir(dest) == []  # neither a final-named shard nor a staging file


def test_resize_reencodes_to_the_shorter_side(tmp_path):
    src = tmp_path / "src"
    (src / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (120, 80), (200, 10, 10)).save(src / "train" / "a" / "wide.png")  # not even a JPEG
    Image.new("CMYK", (40, 60), (0, 50, 100, 0)).save(src / "train" / "a" / "small.jpg")
    write_split(scan_split(str(src), "train"), str(tmp_path / "out"), ShardOptions(resize=48))
    images = {s["__key__"]: Image.open(io.BytesIO(s["jpg"])) for s in _samples(tmp_path / "out" / "train-000000.tar")}
    assert images["a/wide"].size == (72, 48) and images["a/wide"].format == "JPEG"
    assert images["a/small"].size == (40, 60) and images["a/small"].mode == "RGB"  # never upscaled


def test_flat_val_with_a_labels_file(tmp_path):
    src = tmp_path / "src"
    make_demo_dataset(str(src), num_classes=2, train_per_class=2, val_per_class=0, image_size=32)
    flat = src / "val"
    shutil.rmtree(flat)
    flat.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 80, 0, 0)).save(flat / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    classes = scan_split(str(src), "train").classes
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("ILSVRC2012_val_00000001 n00000001\nILSVRC2012_val_00000002.JPEG n00000000\nILSVRC2012_val_00000009 n00000000\n")
    source = scan_split(str(src), "val", classes=classes, labels_file=str(pairs))
    assert [(im.key, im.label) for im in source.images] == [("ILSVRC2012_val_00000001", 1), ("ILSVRC2012_val_00000002", 0)]
    assert any("pairs.txt:3" in p and "ILSVRC2012_val_00000009" in p for p in source.problems)
    assert any("ILSVRC2012_val_00000003.JPEG: no label" in p for p in source.problems)

    devkit, synsets = tmp_path / "ground_truth.txt", tmp_path / "synsets.txt"
    devkit.write_text("2\n1\n2\n")
    synsets.write_text("n00000001\nn00000000\n")  # the devkit's own order, not sorted
    source = scan_split(str(src), "val", classes=classes, labels_file=str(devkit), synsets_file=str(synsets))
    assert [im.label for im in source.images] == [0, 1, 0]
    with pytest.raises(DataError, match="integer IDs need the synset list"):
        scan_split(str(src), "val", classes=classes, labels_file=str(devkit)).images  # noqa: B018
    devkit.write_text("2\n1\n")
    with pytest.raises(DataError, match="2 labels but .* has 3 images"):
        scan_split(str(src), "val", classes=classes, labels_file=str(devkit), synsets_file=str(synsets))


@pytest.fixture
def tiny_shards(tmp_path):
    from mae_core.data.demo import build_demo_shards

    root = tmp_path / "demo"
    build_demo_shards(str(root / "images"), str(root / "shards"), num_classes=3, train_per_class=6, val_per_class=2, image_size=32, maxcount=6)
    return root / "shards"


def _break_first_jpeg(shard) -> str:
    """Overwrite the JPEG start marker of the shard's first image in place; returns its key."""
    import tarfile

    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
    data = bytearray(shard.read_bytes())
    data[member.offset_data:member.offset_data + 2] = b"\0\0"
    shard.write_bytes(bytes(data))
    return member.name[: -len(".jpg")]


def _extension_built() -> bool:
    from mae_core.data import verify

    return verify._restart_layout() is not None


def test_verify_counts_samples_without_restart_segments(imagefolder, tmp_path, capsys):
    if not _extension_built():
        pytest.skip("the _jpegcrop extension was not built")
    dest = tmp_path / "shards"
    assert main(["data", "shard", str(imagefolder), str(dest), "--split", "train", "--restart-columns", "0"]) == 0
    assert main(["data", "verify", str(dest)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "15 samples, 0 shards with problems, 0 with restart segments" in out and "rewrite the shards" in out


def test_verify_names_tampered_shards_and_undecodable_samples(tiny_shards, capsys):
    assert main(["data", "verify", str(tiny_shards)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal's width
    assert "train: 3 shards, 18 samples, 0 shards with problems" in out
    if _extension_built():
        assert "0 shards with problems, 18 with restart segments for crop-window decoding" in out
        assert "rewrite the shards" not in out

    key = _break_first_jpeg(tiny_shards / "train-000001.tar")
    cut = tiny_shards / "val-000000.tar"
    cut.write_bytes(cut.read_bytes()[:2500])
    assert main(["data", "verify", str(tiny_shards)]) == 1
    out = capsys.readouterr().out.replace("\n", " ")
    assert "train-000001.tar: sha256" in out and "modified or corrupted" in out
    assert f"train-000001.tar {key}: undecodable image (UnidentifiedImageError: cannot identify image file)" in out
    assert "val-000000.tar: damaged tar after 0 samples (ReadError: unexpected end of data)" in out
    assert "val-000000.tar: 0 samples, manifest says 6" in out
    assert "train: 3 shards, 18 samples, 1 shards with problems" in out


def test_usage_errors_exit_2_naming_the_file(tmp_path, capsys):
    assert main(["data", "shard", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "nowhere: not a local folder" in capsys.readouterr().err
    assert main(["data", "verify", str(tmp_path)]) == 2
    assert f"no *.manifest.json under {tmp_path}" in capsys.readouterr().err
    assert main(["data", "verify", str(tmp_path), "--split", "train"]) == 2
    assert "train.manifest.json does not exist" in capsys.readouterr().err
    (tmp_path / "src" / "train" / "a").mkdir(parents=True)
    assert main(["data", "shard", str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    assert "no usable images under" in capsys.readouterr().err


def test_demo_command_makes_a_dataset_ready_to_train(tmp_path, capsys):
    from mae_core.data import DataConfig, build_loader

    assert main(["data", "demo", str(tmp_path), "--classes", "3", "--train-per-class", "8", "--val-per-class", "2", "--maxcount", "8"]) == 0
    assert f"shards: {tmp_path / 'shards'}" in capsys.readouterr().out
    cfg = DataConfig(url=str(tmp_path / "shards"), img_size=32, batch_size=4, num_workers=0)
    images, labels = next(iter(build_loader(cfg, split="train", mode="pretrain", rank=0, world_size=1, epoch=0, seed=0)))
    assert images.shape == (4, 3, 32, 32) and labels.max() < 3


def test_cli_help_does_not_import_torch_and_mae_core_data_stays_in_its_layer():
    probe = ("import sys, orchestrator.cli as c; c.build_parser(); print('torch' in sys.modules, 'webdataset' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split() == ["False", "False"]
    probe = ("import sys, mae_core.data; print(sorted(m for m in ('ray', 'submitit', 'mlflow', 'orchestrator') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_maxsize_caps_shard_bytes(imagefolder, tmp_path):
    dest = tmp_path / "capped"
    assert main(["data", "shard", str(imagefolder), str(dest), "--split", "train", "--maxsize", "8kB", "--workers", "1"]) == 0
    manifest = read_manifest(str(dest), "train")
    per_sample = [os.path.getsize(p) + 1536 for p in (imagefolder / "train").rglob("*.JPEG")]  # file + two tar headers
    assert max(manifest.counts) <= 8000 // min(per_sample) and len(manifest.shards) >= sum(per_sample) // 8000


def test_bench_command_reports_images_per_second(tiny_shards, capsys):
    assert main(["data", "bench", str(tiny_shards), "--img-size", "16", "--batch-size", "4", "--workers", "0", "--batches", "3"]) == 0
    assert "0 workers:" in capsys.readouterr().out
