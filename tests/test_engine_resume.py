"""The acceptance test of exact resume: a 2-process CPU run (gloo) killed with
SIGKILL partway and started again ends with the same weights as an uninterrupted run, and
its per-step losses after the resume match."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mae_core.engine.checkpointing import CheckpointManager, load_checkpoint
from mae_core.engine.sinks import read_jsonl_metrics

pytestmark = [pytest.mark.slow]


def _write_config(path: Path, data_url: str, out: Path) -> Path:
    cfg = {
        "task": "pretrain",
        "output_dir": str(out),
        "model": {"name": "mae_vit_micro_patch4_32", "norm_pix_loss": True, "mask_strategy": "random"},
        "data": {"url": data_url, "img_size": 32, "batch_size": 8, "num_workers": 1, "shuffle_buffer": 32},
        "optim": {"lr": 1e-3, "warmup_epochs": 1},
        "train": {"epochs": 2, "seed": 3, "log_every": 1},
        "checkpoint": {"every_steps": 3, "keep_last": 3, "keep_every_epochs": None},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


class _Job:
    """Two ranks started the way srun / submitit start them: one process each, the
    torch.distributed environment in their variables, all in one process group so that a
    single SIGKILL takes the whole job down, as a node failure or preemption would."""

    def __init__(self, config: Path, port: int, world_size: int = 2):
        self.procs = []
        for rank in range(world_size):
            env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
                   "WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
            group = {"process_group": 0 if rank == 0 else self.procs[0].pid}
            self.procs.append(subprocess.Popen([sys.executable, "-m", "mae_core.train", str(config)], env=env,
                                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **group))

    def running(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def kill(self) -> None:
        os.killpg(self.procs[0].pid, signal.SIGKILL)
        self.wait(60)

    def wait(self, timeout: float) -> tuple[list[int], str]:
        logs = [p.communicate(timeout=timeout)[0] for p in self.procs]
        return [p.returncode for p in self.procs], logs[0]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses_by_step(metrics_file: Path, skip_records: int = 0) -> dict[int, float]:
    records = read_jsonl_metrics(str(metrics_file))[skip_records:]
    return {r["step"]: r["metrics"]["train/loss"] for r in records if "train/loss" in r["metrics"]}


def test_sigkilled_two_process_run_resumes_exactly(demo_shards, tmp_path):
    # The uninterrupted reference.
    ref_out = tmp_path / "reference"
    ref = _Job(_write_config(tmp_path / "ref.yaml", demo_shards, ref_out), _free_port())
    codes, log = ref.wait(600)
    assert codes == [0, 0], log
    ref_losses = _losses_by_step(ref_out / "metrics.jsonl")
    final_step = max(ref_losses)
    assert final_step >= 12, "the run must be long enough to kill partway"

    # The same run, SIGKILLed once a mid-run checkpoint exists.
    out = tmp_path / "killed"
    config = _write_config(tmp_path / "run.yaml", demo_shards, out)
    victim = _Job(config, _free_port())
    manager = CheckpointManager(str(out))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        latest = manager.latest()
        if latest and latest.step > final_step // 2:  # mid-epoch: the harder case
            break
        assert victim.running(), victim.wait(60)[1]
        time.sleep(0.01)
    else:
        pytest.fail("no mid-run checkpoint appeared")
    victim.kill()
    killed_at = manager.latest().step
    assert killed_at < final_step, "the kill came too late to test anything"
    records_before = len(read_jsonl_metrics(str(out / "metrics.jsonl")))

    resumed = _Job(config, _free_port())
    codes, log = resumed.wait(600)
    assert codes == [0, 0], log
    assert f"resumed from {manager.dir}/checkpoint-{killed_at:09d}.pt" in log

    after = _losses_by_step(out / "metrics.jsonl", skip_records=records_before)
    assert min(after) == killed_at + 1 and max(after) == final_step
    for step, loss in after.items():
        assert loss == pytest.approx(ref_losses[step], rel=1e-5, abs=1e-6), f"step {step}"

    ref_state = load_checkpoint(CheckpointManager(str(ref_out)).latest().path)["model"]
    state = load_checkpoint(manager.latest().path)["model"]
    assert ref_state.keys() == state.keys()
    for key in ref_state:
        torch.testing.assert_close(state[key], ref_state[key], rtol=1e-5, atol=1e-6, msg=key)
