"""End-to-end pretraining throughput: `python -m bench.train [--quick]`.

Measured side by side in one run on this machine's CPU, each case in fresh processes:

1. The tiny model (mae_vit_micro_patch4_32, 32 px) and ViT-B/16 (224 px): images/s of the whole
   training loop (shard loader + masking + forward + backward + AdamW), one process.
2. Scaling from 1 to 2 processes (DDP over gloo, the torch.distributed environment set as srun
   would), same per-rank batch: aggregate images/s and the ratio.

Figures are medians of the per-step `train/images_per_s` the engine reports, after warm-up steps.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

CASES = {
    "tiny": {"model": {"name": "mae_vit_micro_patch4_32", "norm_pix_loss": True}, "img_size": 32, "batch": 64, "steps": 60, "warmup": 10},
    "base": {"model": {"name": "mae_vit_base_patch16", "norm_pix_loss": True}, "img_size": 224, "batch": 16, "steps": 8, "warmup": 2},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(case: dict, data_url: str, out: Path, world_size: int) -> dict:
    config = {
        "task": "pretrain",
        "output_dir": str(out),
        "model": case["model"],
        "data": {"url": data_url, "img_size": case["img_size"], "batch_size": case["batch"], "num_workers": 1, "shuffle_buffer": 64},
        "optim": {"warmup_epochs": 1},
        "train": {"epochs": 100, "max_steps": case["steps"], "log_every": 1},
        "checkpoint": {"keep_last": 1, "keep_every_epochs": None},
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    port = str(_free_port())
    procs = []
    for rank in range(world_size):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        env.pop("OMP_NUM_THREADS", None)  # the engine picks its threads (cpu_compute_threads)
        procs.append(subprocess.Popen([sys.executable, "-m", "mae_core.train", str(path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        log = p.communicate()[0]
        if p.returncode:
            raise SystemExit(f"benchmark run failed:\n{log[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["metrics"]["train/images_per_s"] for r in records if "train/images_per_s" in r.get("metrics", {})]
    peak = max(r["metrics"].get("mem/peak_mb", 0.0) for r in records if "metrics" in r)
    timed = rates[case["warmup"] :]
    return {"images_per_s": statistics.median(timed), "peak_mb": peak, "steps": len(timed)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model only")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from mae_core.data.demo import build_demo_shards

    console = Console()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = Path(tmp)
        with console.status("generating the benchmark dataset (demo images, 8 shards)"):
            build_demo_shards(str(root / "images"), str(root / "shards"), num_classes=8, train_per_class=100,
                              val_per_class=2, image_size=96, maxcount=100)
        names = ["tiny"] if args.quick else ["tiny", "base"]
        for name in names:
            for world in (1, 2):
                with console.status(f"{name}: {world} process(es)"):
                    r = _run(CASES[name], str(root / "shards"), root / f"{name}-{world}", world)
                results.append((name, world, r))
    table = Table("model", "processes", "per-rank batch", "images/s (median)", "scaling vs 1 process", "peak RSS MB (rank 0)")
    base_rate = {}
    for name, world, r in results:
        base_rate.setdefault(name, r["images_per_s"])
        table.add_row(name, str(world), str(CASES[name]["batch"]), f"{r['images_per_s']:.1f}",
                      f"{r['images_per_s'] / base_rate[name]:.2f}x", f"{r['peak_mb']:.0f}")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
