"""Model benchmark: `python -m bench.model [--quick] [--device cuda]`.

Measured side by side in one run:

1. A full pretrain step (forward + backward + AdamW) of ViT-B/16 at batch 16: the official
   model, i.e. the release's op order re-derived functionally in tests/official_reference.py
   (plain softmax attention, every patch predicted, torch's default AdamW), fp32, against ours
   (SDPA, fused AdamW, decoder head on the masked patches only) in fp32, under bf16 autocast
   (where the CPU has bf16 instructions: avx512_bf16 or AMX), and with `--compile` also under
   torch.compile.
2. Forward + backward of ViT-L/16 at 75% masking, batch 8: the visible-only encoder vs
   `mask_token_in_encoder=True` (Table 1's slow variant), with the analytic FLOPs ratio.

Each group runs in its own process; within it the cases take turns, one iteration each, so a
change in machine load (shared CPUs) hits every case alike. Times are medians over the timed
iterations after warm-up; "best" columns use the fastest iteration, the better estimate of
uncontended speed on a shared machine. TFLOP/s is analytic model FLOPs over the median time. "step peak mem" is the highest rise of memory during one step over
the memory held before it (activations, gradients, workspace; weights and optimizer state are
already resident): on CUDA `max_memory_allocated`, on CPU sampled RSS in a separate process
per case (RSS is process-wide, so it cannot be split between interleaved cases).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

# bf16 peak TFLOPs per GPU for MFU: vendor dense figures (no sparsity), except H100/H200, where
# 790 is the bf16 GEMM peak measured on an H200 (the same figure bench.gpu uses).
PEAK_BF16_TFLOPS = {
    "H200": 790.0,
    "H100": 790.0,  # SXM, same chip and clocks; the PCIe card is lower
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "V100": 125.0,  # fp16 tensor cores; no bf16
    "4090": 165.0,
}


# -- analytic FLOPs ---------------------------------------------------------------------------
def _blocks_flops(tokens: int, dim: int, depth: int, mlp_ratio: float = 4.0) -> float:
    """Forward FLOPs (2 per multiply-add) of `depth` transformer blocks over `tokens` tokens."""
    linear = 2 * tokens * dim * dim * (3 + 1 + 2 * mlp_ratio)  # qkv, proj, fc1 + fc2
    attention = 2 * 2 * tokens * tokens * dim  # QK^T and AV
    return depth * (linear + attention)


def mae_forward_flops(config, mask_ratio: float) -> float:
    """Forward FLOPs of one image through the MAE (matmuls only; norms and softmax are noise)."""
    c = config
    patches = (c.img_size // c.patch_size) ** 2
    patch_dim = c.patch_size**2 * c.in_chans
    kept = patches if c.mask_token_in_encoder else int(patches * (1 - mask_ratio))
    flops = 2 * patches * patch_dim * c.embed_dim  # every patch is embedded in both variants
    flops += _blocks_flops(kept + 1, c.embed_dim, c.depth, c.mlp_ratio)
    flops += 2 * (kept + 1) * c.embed_dim * c.decoder_embed_dim
    flops += _blocks_flops(patches + 1, c.decoder_embed_dim, c.decoder_depth, c.mlp_ratio)
    flops += 2 * (patches + 1) * c.decoder_embed_dim * patch_dim
    return flops


# -- a group of cases, in one worker process -------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRss:
    """Highest RSS seen while the block runs, sampled every 2 ms (torch ops release the GIL)."""

    def __enter__(self):
        self.base = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def rise(self) -> int:
        return self.peak - self.base


def cpu_has_bf16() -> bool:
    """Whether the CPU has bf16 arithmetic (avx512_bf16 or AMX); without it bf16 autocast is
    emulated and slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _build_case(spec: dict, device):
    import torch

    from mae_core import build_model
    from mae_core.optim import param_groups_weight_decay

    torch.manual_seed(0)
    model = build_model(
        spec["model"], fused_attn=spec["fused_attn"], mask_token_in_encoder=spec.get("mask_token_in_encoder", False)
    ).to(device)
    model.train()
    c = model.config
    imgs = torch.randn(spec["batch"], 3, c.img_size, c.img_size, device=device)
    official = spec.get("official", False)
    forward = model
    if official:
        # The release's pipeline as written in the tests, on this model's live parameters.
        from tests.official_reference import reference_mae_loss

        tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        grid = (c.img_size // c.patch_size) ** 2

        def forward(imgs, mask_ratio, full_pred):
            noise = torch.rand(imgs.shape[0], grid, device=imgs.device)
            return reference_mae_loss(tensors, c, imgs, noise, mask_ratio)
    elif spec.get("compile"):
        forward = torch.compile(model)
    optimizer = None
    if spec["optimizer"]:
        # The recipe's AdamW; `fused` only for ours (the release uses torch's default).
        optimizer = torch.optim.AdamW(
            param_groups_weight_decay(model, 0.05), lr=1.5e-4, betas=(0.9, 0.95), fused=spec["fused_adamw"] or None
        )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec["dtype"] == "bf16")

    def step():
        with autocast:
            loss, _, _ = forward(imgs, mask_ratio=spec["mask_ratio"], full_pred=False)
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            model.zero_grad(set_to_none=True)

    return model, step


def run_group(specs: list[dict]) -> list[dict]:
    """Time the cases round-robin, one iteration of each in turn, so that a change in machine
    load hits every case alike; medians per case. On CUDA also each step's peak memory rise."""
    import torch

    device = torch.device(specs[0]["device"])
    cuda = device.type == "cuda"
    cases = [_build_case(spec, device) for spec in specs]

    def timed(step) -> tuple[float, int | None]:
        if not cuda:
            start = time.perf_counter()
            step()
            return time.perf_counter() - start, None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        return time.perf_counter() - start, torch.cuda.max_memory_allocated() - before

    for _ in range(specs[0]["warmup"]):
        for _, step in cases:
            step()
    times: list[list[float]] = [[] for _ in cases]
    peaks: list[int | None] = [None] * len(cases)
    for _ in range(specs[0]["iters"]):
        for i, (_, step) in enumerate(cases):
            elapsed, rise = timed(step)
            times[i].append(elapsed)
            if rise is not None:
                peaks[i] = max(peaks[i] or 0, rise)
    results = []
    for spec, (model, _), case_times, peak in zip(specs, cases, times, peaks):
        median = statistics.median(case_times)
        results.append({
            "seconds": median,
            "times": case_times,
            "images_per_s": spec["batch"] / median,
            "best_images_per_s": spec["batch"] / min(case_times),
            "step_peak_bytes": peak,
            "flops_per_image": 3 * mae_forward_flops(model.config, spec["mask_ratio"]),  # fwd + bwd ~ 3x fwd
            "threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
        })
    return results


def measure_cpu_memory(spec: dict) -> int:
    """Peak RSS rise during one step after a warm-up step (which allocates the optimizer state).

    Run alone in a process started with a fixed MALLOC_MMAP_THRESHOLD_: glibc then hands every
    large block back to the OS on free, so RSS follows the live tensors.
    """
    import torch

    _, step = _build_case(spec, torch.device("cpu"))
    step()
    with _PeakRss() as rss:
        step()
    return rss.rise


def _spawn(mode: str, payload) -> object:
    env = dict(os.environ)
    if mode == "--memory-worker":
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    out = subprocess.run(
        [sys.executable, "-m", "bench.model", mode, json.dumps(payload)],
        capture_output=True, text=True, check=False, env=env,
    )
    if out.returncode:
        raise RuntimeError(f"bench worker {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the table ---------------------------------------------------------------------------------
def _cases(args) -> list[dict]:
    common = dict(device=args.device, warmup=args.warmup, iters=args.iters, mask_ratio=0.75)
    vit_b = dict(common, model="mae_vit_base_patch16", batch=args.batch_b, optimizer=True)
    vit_l = dict(common, model="mae_vit_large_patch16", batch=args.batch_l, optimizer=False,
                 fused_attn=True, fused_adamw=False, dtype=args.l_dtype)
    bf16 = args.device == "cuda" or cpu_has_bf16()
    ours = dict(vit_b, group="B", fused_attn=True, fused_adamw=True)
    cases = [
        dict(vit_b, group="B", label="official (re-derived op order, AdamW)", official=True, fused_attn=False,
             fused_adamw=False, dtype="fp32"),
        dict(ours, label="ours (SDPA, fused AdamW, masked-only head)", dtype="fp32"),
    ]
    if bf16:
        cases.append(dict(ours, label="ours, bf16 autocast", dtype="bf16"))
    if args.compile:
        cases.append(dict(ours, label="ours, bf16 autocast, compiled" if bf16 else "ours, compiled",
                          dtype="bf16" if bf16 else "fp32", compile=True))
    if args.device == "cuda":
        cases.append(dict(vit_b, group="B", label="official, bf16 autocast", official=True, fused_attn=False,
                          fused_adamw=False, dtype="bf16"))
    cases += [
        dict(vit_l, group="L", label="visible-only encoder", mask_token_in_encoder=False),
        dict(vit_l, group="L", label="mask tokens in encoder", mask_token_in_encoder=True),
    ]
    return cases


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def _peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="1 warm-up + 2 timed iterations per case")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--batch-b", type=int, default=16, help="ViT-B/16 pretrain batch (default 16)")
    parser.add_argument("--batch-l", type=int, default=None, help="ViT-L/16 batch (default 8 on CPU, 64 on CUDA)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--compile", action="store_true", help="add ours under torch.compile (minutes to compile on a CPU)")
    parser.add_argument("--l-dtype", choices=["fp32", "bf16"], default=None, help="ViT-L group dtype (default fp32 on CPU, bf16 on CUDA)")
    parser.add_argument("--only", choices=["B", "L"], default=None, help="run one group: B (ViT-B step) or L (ViT-L encoder speedup)")
    parser.add_argument("--no-memory", action="store_true", help="skip the CPU memory measurements (one extra process per case)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_group(json.loads(args.worker))))
        return 0
    if args.memory_worker:
        print(json.dumps(measure_cpu_memory(json.loads(args.memory_worker))))
        return 0
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick or args.device == "cpu" else 3)
    args.iters = args.iters if args.iters is not None else (2 if args.quick else 3 if args.device == "cpu" else 20)
    args.batch_l = args.batch_l or (8 if args.device == "cpu" else 64)
    args.l_dtype = args.l_dtype or ("fp32" if args.device == "cpu" else "bf16")

    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 150)  # no wrapping when captured to a file
    cmd = "python -m bench.model " + " ".join(argv if argv is not None else sys.argv[1:])
    console.print(f"[bold]{cmd.strip()}[/]  warm-up {args.warmup}, timed {args.iters} (median), cases interleaved")
    load_before = os.getloadavg()[0]
    results = []
    cases = _cases(args)
    for group in [args.only] if args.only else ["B", "L"]:
        specs = [spec for spec in cases if spec["group"] == group]
        console.print(f"  running {specs[0]['model']}: {', '.join(s['label'] for s in specs)} ...", style="dim")
        results.extend(zip(specs, _spawn("--worker", specs)))
    if args.device == "cpu" and not args.no_memory:
        console.print("  measuring memory, one process per case ...", style="dim")
        for spec, result in results:
            result["step_peak_bytes"] = _spawn("--memory-worker", spec)
    device_name = results[0][1]["device_name"]
    peak = _peak_tflops(device_name) if args.device == "cuda" else None
    if args.only != "L":
        _print_step_table(console, args, results, device_name, peak)
    if args.only != "B":
        _print_encoder_table(console, args, results)
    # Other work on a shared machine slows every case; interleaving keeps the ratios fair.
    console.print(f"1-min load average: {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, "
                  f"on {os.cpu_count()} CPUs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"spec": s, "result": r} for s, r in results], f, indent=1)
    return 0


def _print_step_table(console, args, results, device_name, peak) -> None:
    from rich.table import Table

    table = Table(title=f"ViT-B/16 pretrain step (fwd + bwd + AdamW), batch {args.batch_b}, {device_name}, "
                        f"{results[0][1]['threads']} threads")
    for col in ("case", "dtype", "img/s", "best img/s", "s/step", "speedup", "best speedup", "TFLOP/s", "step peak mem"):
        table.add_column(col, justify="left" if col == "case" else "right")
    if peak:
        table.add_column("MFU", justify="right")
    base, best_base = results[0][1]["images_per_s"], results[0][1]["best_images_per_s"]
    for spec, r in (x for x in results if x[0]["group"] == "B"):
        tflops = r["images_per_s"] * r["flops_per_image"] / 1e12
        row = [spec["label"], spec["dtype"], f"{r['images_per_s']:.2f}", f"{r['best_images_per_s']:.2f}",
               f"{r['seconds']:.2f}", f"{r['images_per_s'] / base:.2f}x",
               f"{r['best_images_per_s'] / best_base:.2f}x", f"{tflops:.2f}", _gib(r["step_peak_bytes"])]
        if peak:
            row.append(f"{tflops / peak:.1%}")
        table.add_row(*row)
    console.print(table)


def _print_encoder_table(console, args, results) -> None:
    from rich.table import Table

    l_results = [x for x in results if x[0]["group"] == "L"]
    table = Table(title=f"ViT-L/16 fwd + bwd at 75% masking, batch {args.batch_l}, {args.l_dtype}")
    for col in ("encoder", "img/s", "best img/s", "s/iter", "GFLOP/img (fwd+bwd)", "step peak mem"):
        table.add_column(col, justify="left" if col == "encoder" else "right")
    for spec, r in l_results:
        table.add_row(spec["label"], f"{r['images_per_s']:.2f}", f"{r['best_images_per_s']:.2f}", f"{r['seconds']:.2f}",
                      f"{r['flops_per_image'] / 1e9:.0f}", _gib(r["step_peak_bytes"]))
    console.print(table)
    (_, fast), (_, slow) = l_results
    speedup = fast["images_per_s"] / slow["images_per_s"]
    best_speedup = fast["best_images_per_s"] / slow["best_images_per_s"]
    flops_ratio = slow["flops_per_image"] / fast["flops_per_image"]
    memory = ""
    if fast["step_peak_bytes"] and slow["step_peak_bytes"]:
        memory = f", {slow['step_peak_bytes'] / fast['step_peak_bytes']:.2f}x less step memory"
    console.print(f"visible-only encoder: [bold]{speedup:.2f}x[/] faster wall clock (best-of: {best_speedup:.2f}x), "
                  f"{flops_ratio:.2f}x fewer FLOPs (analytic){memory} (paper: 2.8x wall clock, 3.3x FLOPs)")


if __name__ == "__main__":
    raise SystemExit(main())
