"""Data and checkpoints under faults (figures in docs/reliability.md):

- an S3 server that stops answering for 60 s mid-epoch (SIGSTOP, SIGCONT 60 s later) is waited out
  by the client's and the shard reader's bounded retries, no sample lost or repeated; one silent
  for longer than the retry budget costs the shards it hit (skipped, counted), not the epoch;
- a shard truncated mid-stream and a corrupt JPEG mid-shard, in one epoch with workers and the
  shuffle on, are skipped and counted, batches as planned; an unshuffled batch left without any
  readable sample takes the previous batch's, and a resume there gives the same batches;
- a SIGKILL while a checkpoint is being written leaves the previous one as the latest, loadable,
  and the run resumes from it (the orphaned temporary file is removed by the next save).

The S3 tests start a moto server of their own on another port and SIGSTOP that one: the same
program with the same flags as the dev stack's (`moto_server -H 127.0.0.1 -p PORT`), reached the
same way (s3fs over loopback), so the fault is the same, without stalling the other tests that use
the stack's server meanwhile. Corrupt-JPEG and missing-label samples alone, and a truncated shard
alone, are in test_data_loader.py.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from mae_core.data import DataConfig, build_loader
from mae_core.data import io as data_io
from mae_core.data.manifest import shard_name
from mae_core.engine.checkpointing import CheckpointManager, load_checkpoint
from tests.fixtures.s3 import _TEST_CREDENTIALS, _free_port, _moto_command, _wait_until_answering
from tests.test_data_loader import decode_indices, write_indexed_split

HANG_S = 60.0
SHARDS, PER_SHARD = 8, 8


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- S3 server that stops answering ---

class OwnS3:
    """A moto server of this module's (not the stack's): SIGSTOPping it stalls nobody else."""

    def __init__(self):
        self.port = _free_port()
        self.process = subprocess.Popen(_moto_command(self.port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        _wait_until_answering(self.endpoint_url + "/", self.process)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def hang(self, seconds: float) -> threading.Timer:
        """SIGSTOP now, SIGCONT after `seconds` (callers also SIGCONT in a finally: `resume`)."""
        os.kill(self.process.pid, signal.SIGSTOP)
        timer = threading.Timer(seconds, self.resume)
        timer.start()
        return timer

    def resume(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def own_s3(tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:
        for name, value in _TEST_CREDENTIALS.items():
            if not os.environ.get(name):
                env.setenv(name, value)
        server = OwnS3()
        try:
            import s3fs

            local = tmp_path_factory.mktemp("faults-shards")
            write_indexed_split(local, "train", [PER_SHARD] * SHARDS)
            fs = s3fs.S3FileSystem(endpoint_url=server.endpoint_url, skip_instance_cache=True)
            bucket = f"maectl-faults-{uuid.uuid4().hex[:8]}"
            fs.mkdir(bucket)
            fs.put(f"{local}/", f"{bucket}/ds/", recursive=True)
            server.url = f"s3://{bucket}/ds"
            yield server
        finally:
            server.resume()
            server.stop()


def s3_loader(server: OwnS3, **kw):
    # Unshuffled, in the main process: the order is fixed and the stall is met at a known point
    # (the next shard's first request, once the current shard's one GET is consumed).
    cfg = DataConfig(url=server.url, s3_endpoint_url=server.endpoint_url, img_size=16, batch_size=4, num_workers=0, shuffle_buffer=1, **kw)
    return build_loader(cfg, split="train", mode="pretrain", rank=0, world_size=1, epoch=0, seed=0)


def run_epoch(loader, hang=None, after_batches: int = 2):
    """(sample indices in delivery order, seconds per batch, epoch seconds); `hang(server)` is
    started once `after_batches` batches have arrived."""
    indices, stamps, timer = [], [], None
    start = time.monotonic()
    try:
        for k, (images, _) in enumerate(loader):
            indices.extend(decode_indices(images))
            stamps.append(time.monotonic())
            if hang is not None and k + 1 == after_batches:
                timer = hang()
    finally:
        if timer is not None:
            timer.cancel()
    return indices, [b - a for a, b in zip([start, *stamps], stamps)], time.monotonic() - start


@pytest.mark.slow
@pytest.mark.integration
def test_a_60s_s3_stall_mid_epoch_is_waited_out_with_no_sample_lost_or_repeated(own_s3, caplog):
    undisturbed, _, clean_s = run_epoch(s3_loader(own_s3))
    assert sorted(undisturbed) == list(range(SHARDS * PER_SHARD))
    loader = s3_loader(own_s3)
    try:
        with caplog.at_level(logging.WARNING, logger="mae_core.data"), caplog.at_level(logging.DEBUG, logger="s3fs"):
            seen, per_batch, stalled_s = run_epoch(loader, lambda: own_s3.hang(HANG_S))
    finally:
        own_s3.resume()  # ALWAYS: never leave the server stopped
    client_retries = [r for r in caplog.records if r.name.startswith("s3fs") and "Retryable error" in r.getMessage()]
    print(f"\nS3 stall of {HANG_S:.0f} s after batch 2 of {len(per_batch)}: epoch {stalled_s:.1f} s "
          f"(undisturbed {clean_s:.1f} s); longest batch wait {max(per_batch):.1f} s; client retries after a timeout: "
          f"{len(client_retries)}, shard re-reads: {sum('retry' in r.message for r in caplog.records)}; skipped {loader.skipped}; "
          f"load average {os.getloadavg()[0]:.1f}")
    assert seen == undisturbed and loader.skipped == 0  # same samples, same order: none lost, none twice
    assert max(per_batch) >= HANG_S - 5  # the stall was met mid-epoch
    # Waited out by bounded, timed-out attempts (25 s each, 2 by the client, then the reader's
    # re-open after 1 s), not by one open-ended request.
    assert client_retries and any("retry 1 of 3" in r.message for r in caplog.records)
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)


@pytest.mark.integration
def test_an_s3_server_silent_past_the_retry_budget_costs_its_shards_not_the_epoch(own_s3, monkeypatch, caplog):
    """Shrunken budget (1 s timeouts, one client attempt, one re-read after 0.5 s): a shard met
    while the server is stopped gives up after ~3 s, its samples skipped and counted, and the epoch
    ends with its planned batches."""
    monkeypatch.setattr(data_io, "S3_CLIENT_CONFIG", {"connect_timeout": 1, "read_timeout": 1, "retries": {"total_max_attempts": 1}})
    monkeypatch.setattr(data_io, "S3_CLIENT_ATTEMPTS", 1)
    loader = s3_loader(own_s3, shard_retries=1, retry_delay_s=0.5)
    try:
        with caplog.at_level(logging.WARNING, logger="mae_core.data"):
            seen, _, seconds = run_epoch(loader, lambda: own_s3.hang(9.0))
    finally:
        own_s3.resume()
    given_up = [r.message for r in caplog.records if r.levelno == logging.ERROR]
    print(f"\nS3 silent 9 s with a ~3 s budget per shard: {len(given_up)} shard(s) given up, {loader.skipped} samples skipped, "
          f"epoch {seconds:.1f} s, {len(seen) // 4} batches as planned")
    assert len(seen) == 4 * len(loader) == SHARDS * PER_SHARD
    assert given_up and all("giving up on shard s3://" in m for m in given_up)
    assert loader.skipped == PER_SHARD * len(given_up)
    # What was delivered are the other shards' samples (the lost slots are filled from the batch before).
    lost = {int(m.split("train-")[1][:6]) for m in given_up}
    assert set(seen) == {i for i in range(SHARDS * PER_SHARD) if i // PER_SHARD not in lost}


# --- damaged shards ---

def test_a_truncated_shard_and_a_corrupt_jpeg_in_one_epoch_are_skipped_and_counted(tmp_path):
    write_indexed_split(tmp_path, "train", [12, 12, 12, 12], broken={30: {"jpg": b"\xff\xd8\xff\xe0 corrupt", "cls": 2}})  # mid-shard 2
    shard = tmp_path / shard_name("train", 1)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # mid-stream: in the middle of a member
    cfg = DataConfig(url=str(tmp_path), img_size=16, batch_size=4, num_workers=2, shuffle_buffer=16, shard_retries=1, retry_delay_s=0)
    loader = build_loader(cfg, split="train", mode="pretrain", rank=0, world_size=1, epoch=0, seed=0)
    batches = [images for images, _ in loader]
    seen = {i for images in batches for i in decode_indices(images)}
    kept = sorted(i for i in seen if i // 12 == 1)  # what the truncated shard delivered: a prefix
    print(f"\ntruncated shard + corrupt JPEG: {loader.skipped} skipped ({12 - len(kept)} of the truncated shard, 1 corrupt), "
          f"{len(batches)} of {len(loader)} batches")
    assert len(batches) == len(loader) == 12 and all(b.shape[0] == 4 for b in batches)
    assert 0 < len(kept) < 12 and kept == list(range(12, 12 + len(kept)))
    assert loader.skipped == (12 - len(kept)) + 1
    assert seen == {i for i in range(48) if i != 30 and (i // 12 != 1 or i in kept)}


def test_batches_with_no_readable_sample_take_the_latest_readable_ones_and_resume_alike(tmp_path):
    """Unshuffled, the rest of a truncated shard fills whole batches with stand-ins: they take the
    readable samples of the latest batch that had any, and a resume at any batch yields the same."""
    write_indexed_split(tmp_path, "train", [8, 8])
    shard = tmp_path / shard_name("train", 0)
    data = shard.read_bytes()
    shard.write_bytes(data[: 3 * len(data) // 8])  # about 3 samples left
    cfg = DataConfig(url=str(tmp_path), img_size=16, batch_size=2, num_workers=0, shuffle_buffer=1, shard_retries=0)

    def epoch(start_batch: int = 0):
        loader = build_loader(cfg, split="train", mode="pretrain", rank=0, world_size=1, epoch=0, seed=0, start_batch=start_batch)
        return [(x.clone(), y.clone()) for x, y in loader], loader.skipped

    run, skipped = epoch()
    indices = [decode_indices(x) for x, _ in run]
    kept = sorted({i for batch in indices[:4] for i in batch})
    assert len(run) == 8 and indices[4:] == [[8, 9], [10, 11], [12, 13], [14, 15]]
    assert 0 < len(kept) < 6 and kept == list(range(len(kept))) and skipped == 8 - len(kept)
    assert any(not set(batch) & set(range(2 * k, 2 * k + 2)) for k, batch in enumerate(indices[:4]))  # a donated batch
    for start in range(1, 5):
        resumed, _ = epoch(start)
        assert len(resumed) == 8 - start and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(run[start:], resumed))


def test_all_damaged_with_nothing_to_borrow_is_a_clear_error(tmp_path):
    from mae_core.data import DataError

    write_indexed_split(tmp_path, "train", [4, 4], broken={i: {"jpg": b"junk", "cls": 0} for i in range(4)})
    cfg = DataConfig(url=str(tmp_path), img_size=16, batch_size=4, num_workers=0, shuffle_buffer=1)
    with pytest.raises(DataError, match="every sample of a batch and of the batch before it is unreadable"):
        list(build_loader(cfg, split="train", mode="pretrain", rank=0, world_size=1, epoch=0, seed=0))


# --- SIGKILL during a checkpoint write ---

# The engine run as `python -m mae_core.train CONFIG`, except that the Nth checkpoint save pauses
# inside it (after its bytes went to the temporary file, before fsync and rename) and says so in a
# flag file: the test kills it there, deterministically mid-save. Test-only wrapping: the engine
# itself is unchanged.
_PAUSING_SAVE = textwrap.dedent("""
    import os, runpy, sys, time
    flag, nth = os.environ["FAULT_FLAG"], int(os.environ["FAULT_NTH_SAVE"])
    real_fsync, calls = os.fsync, [0]
    def fsync(fd):
        if sys._getframe(1).f_code.co_filename.endswith("checkpointing.py"):
            calls[0] += 1
            if calls[0] == nth:
                open(flag, "w").close()
                time.sleep(600)
        real_fsync(fd)
    os.fsync = fsync
    sys.argv = ["mae_core.train", sys.argv[1]]
    runpy.run_module("mae_core.train", run_name="__main__", alter_sys=True)
""")


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one_and_the_run_resumes_from_it(demo_shards, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "task": "pretrain", "output_dir": str(out),
        "model": {"name": "mae_vit_micro_patch4_32", "norm_pix_loss": True},
        "data": {"url": demo_shards, "img_size": 32, "batch_size": 16, "num_workers": 0, "shuffle_buffer": 32},
        "optim": {"lr": 1e-3, "warmup_epochs": 1},
        "train": {"epochs": 1, "seed": 3, "log_every": 1},
        "checkpoint": {"every_steps": 5, "keep_last": 3, "keep_every_epochs": None},
    }))
    flag = tmp_path / "saving"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FAULT_FLAG": str(flag), "FAULT_NTH_SAVE": "2"}
    victim = subprocess.Popen([sys.executable, "-c", _PAUSING_SAVE, str(config)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not flag.exists():
            assert victim.poll() is None and time.monotonic() < deadline, victim.communicate(timeout=30)[0][-3000:]
            time.sleep(0.05)
        os.kill(victim.pid, signal.SIGKILL)  # in the middle of the second save
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.communicate(timeout=60)
    manager = CheckpointManager(str(out))
    partial = sorted(Path(manager.dir).glob("checkpoint-*.pt.tmp-*"))
    previous = manager.latest()
    assert len(partial) == 1 and partial[0].name.startswith("checkpoint-000000010.pt.tmp-")  # the killed save
    assert previous is not None and previous.step == 5  # the one before it, intact
    assert load_checkpoint(previous.path)["format"]

    resumed = subprocess.run([sys.executable, "-m", "mae_core.train", str(config)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert f"resumed from {manager.dir}/checkpoint-{previous.step:09d}.pt" in log
    final = manager.latest()
    print(f"\nSIGKILL in save 2 (step 10): latest stayed step {previous.step}, loadable; resumed from it; "
          f"finished at step {final.step}; orphaned temporary file removed: {not partial[0].exists()}")
    assert final.step > 10 and load_checkpoint(final.path)["format"]
    assert not partial[0].exists()  # the next save removed the orphan
