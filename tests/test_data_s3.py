"""Shards on a real S3 API server (moto on 127.0.0.1, or the stack's), through s3fs."""

from __future__ import annotations

import pytest
import torch

from mae_core.data import DataConfig, build_loader, read_manifest
from mae_core.data.demo import make_demo_dataset
from orchestrator.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    src = tmp_path_factory.mktemp("s3-src")
    make_demo_dataset(str(src), num_classes=3, train_per_class=8, val_per_class=3, image_size=32, seed=1)
    return src


@pytest.fixture(scope="module")
def sharded(images, s3_bucket, s3_server, tmp_path_factory):
    """The same images sharded to S3 (through the CLI) and to a local folder."""
    local = tmp_path_factory.mktemp("s3-local")
    remote = f"{s3_bucket}/imagenet-like"
    common = ["--maxcount", "6", "--workers", "2"]
    assert main(["data", "shard", str(images), remote, "--endpoint-url", s3_server.endpoint_url, *common]) == 0
    assert main(["data", "shard", str(images), str(local), *common]) == 0
    return remote, str(local)


def test_shards_and_manifests_land_in_the_bucket(sharded, s3_server):
    remote, local = sharded
    keys = sorted(p.rsplit("/", 1)[1] for p in s3_server.filesystem().ls(remote.removeprefix("s3://")))
    assert keys == ["train-000000.tar", "train-000001.tar", "train-000002.tar", "train-000003.tar", "train.manifest.json",
                    "val-000000.tar", "val-000001.tar", "val.manifest.json"]
    on_s3 = read_manifest(remote, "train", storage_options=s3_server.storage_options)
    assert on_s3.shards == read_manifest(local, "train").shards  # byte-identical shards either way


def test_loader_streams_from_s3_exactly_as_from_disk(sharded, s3_server):
    remote, local = sharded
    args = dict(split="train", mode="pretrain", rank=1, world_size=2, epoch=2, seed=5)
    kw = dict(img_size=16, batch_size=4, num_workers=2, shuffle_buffer=8)
    from_s3 = list(build_loader(DataConfig(url=remote, s3_endpoint_url=s3_server.endpoint_url, **kw), **args))
    from_disk = list(build_loader(DataConfig(url=local, **kw), **args))
    assert len(from_s3) == len(from_disk) == 2
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(from_s3, from_disk))


def test_rerun_to_s3_keeps_the_uploaded_shards(sharded, images, s3_server, capsys):
    remote, _ = sharded
    assert main(["data", "shard", str(images), remote, "--endpoint-url", s3_server.endpoint_url, "--maxcount", "6", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "train: 24 samples in 4 shards (4 already in place)" in out and "(2 already in place)" in out


def test_verify_on_s3_catches_a_replaced_object(sharded, s3_server, capsys):
    remote, _ = sharded
    assert main(["data", "verify", remote, "--endpoint-url", s3_server.endpoint_url]) == 0
    fs = s3_server.filesystem()
    path = remote.removeprefix("s3://") + "/val-000001.tar"
    original = fs.cat_file(path)
    try:
        fs.pipe_file(path, original[:-1] + b"\x01")
        assert main(["data", "verify", remote, "--split", "val", "--endpoint-url", s3_server.endpoint_url]) == 1
        assert "val-000001.tar: sha256" in capsys.readouterr().out
    finally:
        fs.pipe_file(path, original)


def test_webdataset_itself_opens_s3_urls_once_mae_core_data_is_imported(sharded, s3_server, monkeypatch):
    import webdataset as wds

    remote, _ = sharded
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)  # plain webdataset takes config from the env
    dataset = wds.WebDataset(f"{remote}/val-{{000000..000001}}.tar", shardshuffle=False)
    samples = list(dataset)
    assert len(samples) == 9 and all("jpg" in s and "cls" in s for s in samples)
