"""GPU benchmark, one prepared run of at most 8 minutes: `bash bench/gpu.sh` (or `python -m bench.gpu`).

What it measures, on one GPU, and writes as one JSON (`--json`):

- pretrain: images/s of a full MAE pretraining step (forward, backward, AdamW) at 224 px and 75%
  masking for ViT-B/16, ViT-L/16 and ViT-H/14, three ways each:
    ours_bf16          SDPA attention, bf16 autocast, fused AdamW, decoder head on masked patches only
    ours_bf16_compile  the same under torch.compile
    reference_fp16     the plain path (softmax(QK^T)V attention, torch's default AdamW, every patch
                       predicted) under fp16 autocast with a GradScaler: the release's setting
  with MFU (analytic model FLOPs, `bench.model.mae_forward_flops`, x3 for the backward, over the
  bf16 peak: 790 TFLOP/s measured on an H200, `--peak-tflops` otherwise) and peak memory.
- encoder: the visible-only encoder against `mask_token_in_encoder=True` on ViT-L/16 (fwd + bwd,
  bf16), the wall-clock speedup beside the FLOPs ratio (paper: 2.8x wall clock, 3.3x FLOPs).
- decode: JPEG decode images/s, batched on the GPU (`torchvision.io.decode_jpeg(device="cuda")`,
  then crop + resize there) against the CPU loader's decode + crop + resize on one core
  (`mae_core.data.decode`), so that cores per GPU = a step's images/s / one core's images/s.

Every section runs in its own process under a time box, so a hang, a crash or an out-of-memory
in one is reported in the JSON and the next one still runs; cases inside a section report as
they finish, so a section cut short keeps what it measured. The sections run most important
first (ViT-L, the encoder speedup, decode, ViT-B, ViT-H) and the total stays under `--budget-s`.

`--dry` runs the same code on tiny shapes on the CPU in seconds (compile with the eager backend,
JPEG "GPU" decode on the CPU); the test suite runs it. Only torch, torchvision, numpy and the
model's own modules are imported: a GPU machine's system Python needs nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

# bf16 dense matmul peak measured on an H200 (the vendor's 989 is not reached by any GEMM);
# an H100 SXM is the same chip at the same clocks.
MEASURED_PEAK_TFLOPS = {"H200": 790.0, "H100": 790.0}
# Packages of ours that a GPU machine's system Python lacks (it has torch, torchvision, timm,
# numpy, pyyaml, rich, fsspec): a section must not need them. decode.py imports simplejpeg only
# if it is there (PIL otherwise), so the decode section may show it where it is installed.
NOT_ON_GPU_MACHINE = ("webdataset", "simplejpeg", "mlflow", "ray", "submitit", "s3fs", "boto3", "botocore",
                      "aiobotocore", "orchestrator", "turbojpeg")

MODELS = {  # name, stated batch for an H200 (halved on out-of-memory)
    "ViT-B/16": ("mae_vit_base_patch16", 256),
    "ViT-L/16": ("mae_vit_large_patch16", 256),
    "ViT-H/14": ("mae_vit_huge_patch14", 128),
}
DRY_MODELS = {  # the same code on shapes that take milliseconds on a CPU
    "ViT-B/16": ("mae_vit_micro_patch4_32", 4),
    "ViT-L/16": ("mae_vit_micro_patch4_32", 4),
    "ViT-H/14": ("mae_vit_micro_patch4_32", 2),
}
VARIANTS = ("ours_bf16", "reference_fp16", "ours_bf16_compile")  # compile last: the slow one to start
# (section, seconds at most). Most important first; boxes sum to less than the default budget.
# Each box includes the worker's start (~5-10 s: torch, CUDA); they add up to well under 450 s.
SECTIONS = (("pretrain:ViT-L/16", 120), ("encoder", 45), ("decode", 35), ("pretrain:ViT-B/16", 75),
            ("pretrain:ViT-H/14", 105))
# A section's process is killed at the end of its box; its own (cooperative) deadline comes
# earlier, so that a slow last step still ends inside the box.
COOPERATIVE_SHARE = 0.85


# -- workers (one process per section) ---------------------------------------------------------
def _device(dry: bool):
    import torch

    if dry:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device visible (use --dry for the CPU dry run)")
    return torch.device("cuda")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def _is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def _time_steps(step, device, *, warmup: int, steps: int, deadline: float) -> tuple[list[float], float]:
    """Run `warmup` untimed steps (the first includes any compile), then up to `steps` timed ones
    while time is left. Returns per-step seconds and the first step's seconds."""
    start = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    _sync(device)
    _reset_peak(device)
    times: list[float] = []
    while len(times) < steps and (not times or time.perf_counter() < deadline):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times, first


def _pretrain_step(name: str, batch: int, variant: str, device, dry: bool):
    """One pretraining step of `variant` as a closure; builds model, optimizer and inputs."""
    import torch

    from mae_core.models.config import model_config
    from mae_core.models.mae import MaskedAutoencoderViT
    from mae_core.optim import param_groups_weight_decay

    ours = variant.startswith("ours")
    config = model_config(name, fused_attn=ours)
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(config).to(device).train()
    # fused AdamW is ours; the release uses torch's default (foreach) implementation.
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=1.5e-4, betas=(0.9, 0.95),
                                  fused=True if ours else None)
    dtype = torch.bfloat16 if ours else torch.float16
    scaler = None if ours else torch.amp.GradScaler(device.type)
    forward = model
    if variant.endswith("compile"):
        forward = torch.compile(model, backend="eager" if dry else "inductor")
    imgs = torch.randn(batch, 3, config.img_size, config.img_size, device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype):
            loss, _, _ = forward(imgs, full_pred=not ours)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return config, step


def _case_result(times: list[float], first: float, batch: int, flops_per_image: float, peak_tflops, device) -> dict:
    median = statistics.median(times)
    tflops = batch / median * flops_per_image / 1e12
    return {
        "batch": batch,
        "steps_timed": len(times),
        "step_ms_median": 1000 * median,
        "step_ms_min": 1000 * min(times),
        "images_per_s": batch / median,
        "best_images_per_s": batch / min(times),
        "first_step_s": first,
        "flops_per_image": flops_per_image,
        "tflops": tflops,
        "mfu": tflops / peak_tflops if peak_tflops else None,
        "peak_mem_gib": _peak_gib(device),
    }


def _free(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()


def work_pretrain(params: dict, emit) -> None:
    from bench.model import mae_forward_flops

    dry, label = params["dry"], params["model"]
    device = _device(dry)
    name, batch = (DRY_MODELS if dry else MODELS)[label]
    batch = params.get("batch") or batch
    deadline = params["deadline"]
    for i, variant in enumerate(VARIANTS):
        if params.get("inject_failure") == variant:
            raise RuntimeError(f"injected failure in {variant} (--inject-failure)")
        # Share what is left between the variants still to run; compile (last) gets the rest.
        left = deadline - time.perf_counter()
        case_deadline = time.perf_counter() + (left / (len(VARIANTS) - i)) * (0.6 if i < len(VARIANTS) - 1 else 1.0)
        tried, note = batch, None
        while True:
            try:
                config, step = _pretrain_step(name, tried, variant, device, dry)
                times, first = _time_steps(step, device, warmup=params["warmup"], steps=params["steps"], deadline=case_deadline)
                break
            except Exception as err:  # noqa: BLE001 — out of memory: halve the batch and retry
                step = None
                _free(device)
                if not _is_oom(err) or tried <= 8:
                    raise
                note = f"batch {tried} ran out of memory; halved"
                tried //= 2
        flops = 3 * mae_forward_flops(config, config.mask_ratio)
        result = _case_result(times, first, tried, flops, params["peak_tflops"], device)
        if note:
            result["note"] = note
        emit({"case": variant, **result})
        del step
        _free(device)


def work_encoder(params: dict, emit) -> None:
    """ViT-L/16 fwd + bwd at 75% masking, bf16: visible-only encoder vs mask tokens in it."""
    import torch

    from bench.model import mae_forward_flops
    from mae_core.models.config import model_config
    from mae_core.models.mae import MaskedAutoencoderViT

    dry = params["dry"]
    device = _device(dry)
    name, batch = ("mae_vit_micro_patch4_32", 4) if dry else ("mae_vit_large_patch16", 128)
    deadline = params["deadline"]
    steps = {}
    for variant, in_encoder in (("visible_only", False), ("mask_token_in_encoder", True)):
        config = model_config(name, mask_token_in_encoder=in_encoder)
        torch.manual_seed(0)
        model = MaskedAutoencoderViT(config).to(device).train()
        imgs = torch.randn(batch, 3, config.img_size, config.img_size, device=device)

        def step(model=model, imgs=imgs):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss, _, _ = model(imgs, full_pred=False)
            loss.backward()
            model.zero_grad(set_to_none=True)

        steps[variant] = (config, step)
    # Alternate the two, one step each, so a clock or thermal drift hits both alike.
    times = {k: [] for k in steps}
    for _, step in steps.values():
        step()
        step()
    _sync(device)
    while min(len(v) for v in times.values()) < params["steps"] and (not times["visible_only"] or time.perf_counter() < deadline):
        for variant, (_, step) in steps.items():
            start = time.perf_counter()
            step()
            _sync(device)
            times[variant].append(time.perf_counter() - start)
    for variant, (config, _) in steps.items():
        flops = 3 * mae_forward_flops(config, config.mask_ratio)
        emit({"case": variant, **_case_result(times[variant], 0.0, batch, flops, params["peak_tflops"], device)})


def _synthetic_jpegs(count: int, width: int = 500, height: int = 375) -> list:
    """ImageNet-like JPEGs (500 x 375, quality 90): smooth random colour fields with texture, as
    uint8 tensors of encoded bytes. Pure noise would compress (and decode) unlike photos."""
    import torch
    import torch.nn.functional as F
    from torchvision.io import encode_jpeg

    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        coarse = torch.rand(1, 3, height // 25, width // 25, generator=gen)
        img = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
        img = (img + 0.08 * torch.randn(1, 3, height, width, generator=gen)).clamp(0, 1)
        out.append(encode_jpeg((img[0] * 255).to(torch.uint8), quality=90))
    return out


def work_decode(params: dict, emit) -> None:
    import torch
    import torch.nn.functional as F
    from torchvision.io import decode_jpeg

    dry = params["dry"]
    device = _device(dry)
    jpegs = _synthetic_jpegs(8 if dry else 256)
    batch = len(jpegs)
    deadline = params["deadline"]
    half = time.perf_counter() + (deadline - time.perf_counter()) / 2

    # GPU: nvJPEG through torchvision, one batched call; then each crop resized on the GPU.
    from torchvision.transforms import RandomResizedCrop

    boxes = [RandomResizedCrop.get_params(torch.empty(375, 500), (0.2, 1.0), (3 / 4, 4 / 3)) for _ in jpegs]

    def gpu_decode():
        return decode_jpeg(jpegs, device=device)

    def gpu_decode_crop():
        images = decode_jpeg(jpegs, device=device)
        crops = [F.interpolate(img[None, :, top:top + h, left:left + w].float(), size=(224, 224), mode="bilinear",
                               antialias=True, align_corners=False) for img, (top, left, h, w) in zip(images, boxes)]
        return torch.cat(crops).round_().clamp_(0, 255).to(torch.uint8)

    for case, fn in (("gpu_decode", gpu_decode), ("gpu_decode_crop_resize", gpu_decode_crop)):
        fn()
        _sync(device)
        times = []
        while len(times) < params["steps"] and (not times or time.perf_counter() < half):
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - start)
        emit({"case": case, "device": str(device), "batch": batch, "images_per_s": batch / statistics.median(times),
              "best_images_per_s": batch / min(times), "steps_timed": len(times)})

    # CPU: the loader's own decode + RandomResizedCrop + resize, on one core.
    torch.set_num_threads(1)
    blobs = [bytes(j.numpy().tobytes()) for j in jpegs]
    try:
        from mae_core.data import decode as loader_decode
        from mae_core.data.transforms import RandomResizedView

        view = RandomResizedView(224, (0.2, 1.0), (3 / 4, 4 / 3), True)

        def cpu_one(data):
            image = loader_decode.open_image(data)
            out = loader_decode.decode_view(image, view(image), 224)
            return out, image.decoded_by

        decoder = None
    except Exception as err:  # noqa: BLE001 — say why, then measure torchvision's CPU decode instead
        decoder = f"torchvision (mae_core.data.decode did not import: {type(err).__name__}: {err})"
        crop = RandomResizedCrop(224, (0.2, 1.0), antialias=True)

        def cpu_one(data):
            return crop(decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))), "torchvision"

    used = set()
    for data in blobs[:2]:
        cpu_one(data)
    start, done = time.perf_counter(), 0
    while done < len(blobs) * 2 and (done < 8 or time.perf_counter() < deadline):
        _, by = cpu_one(blobs[done % len(blobs)])
        used.add(by)
        done += 1
    elapsed = time.perf_counter() - start
    emit({"case": "cpu_loader_one_core", "images_per_s": done / elapsed, "images": done,
          "decoder": decoder or "mae_core.data.decode: " + ", ".join(sorted(str(u) for u in used))})


WORKERS = {"pretrain": work_pretrain, "encoder": work_encoder, "decode": work_decode}


def _third_party_modules() -> list[str]:
    roots = {m.split(".")[0] for m in list(sys.modules)}
    return sorted(r for r in roots if r not in sys.stdlib_module_names and not r.startswith("_"))


def run_worker(section: str, params: dict, out_path: str) -> int:
    """Run one section, appending a JSON line per finished case to `out_path`."""
    with open(out_path, "a") as out:
        def emit(record: dict) -> None:
            out.write(json.dumps(record) + "\n")
            out.flush()

        # The deadline is wall time set by the driver: the box includes this process's start.
        params = dict(params, deadline=time.perf_counter() + (params["deadline_wall"] - time.time()))
        kind = section.split(":")[0]
        if kind == "pretrain":
            params["model"] = section.split(":", 1)[1]
        WORKERS[kind](params, emit)
        emit({"imports": _third_party_modules()})
    return 0


# -- the driver ---------------------------------------------------------------------------------
def _read_records(path: str) -> tuple[list[dict], list[str]]:
    records, imports = [], []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    record = json.loads(line)
                    if "imports" in record:
                        imports = record["imports"]
                    else:
                        records.append(record)
    return records, imports


def run_section(section: str, box: float, params: dict, inline: bool) -> dict:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "records.jsonl")
        payload = dict(params, box_s=box, deadline_wall=time.time() + COOPERATIVE_SHARE * box)
        status, detail = "ok", None
        if inline:
            try:
                run_worker(section, payload, path)
            except Exception as err:  # noqa: BLE001 — reported, the next section runs
                status, detail = "failed", f"{type(err).__name__}: {err}"
        else:
            # The worker's own box is cooperative; this timeout (a little longer) is the hard one.
            cmd = [sys.executable, "-m", "bench.gpu", "--worker", section, "--params", json.dumps(payload), "--records", path]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=box)
                if proc.returncode:
                    status, detail = "failed", f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}"
            except subprocess.TimeoutExpired:
                status, detail = "timed_out", f"killed at the end of its {box:.0f} s box"
        records, imports = _read_records(path)
    out = {"status": status, "seconds": time.perf_counter() - start, "box_s": box,
           "cases": {r.pop("case"): r for r in records}}
    if imports:
        out["imports"] = imports
        out["needs_missing_on_gpu_machine"] = [m for m in imports if m in NOT_ON_GPU_MACHINE]
    if detail:
        out["error"] = detail
    return out


def _device_info(dry: bool) -> dict:
    import torch

    info = {"torch": torch.__version__, "dry": dry, "cpu_count": os.cpu_count()}
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except Exception as err:  # noqa: BLE001
        info["torchvision"] = f"not importable: {err}"
    if not dry and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, memory_gib=props.total_memory / 2**30, capability=f"{props.major}.{props.minor}",
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    else:
        info["device"] = "cpu" if dry else "no CUDA device"
    return info


def summarize(report: dict) -> dict:
    """Ratios and the issue's targets, from the sections that finished."""
    s: dict = {}
    for label in MODELS:
        cases = report["sections"].get(f"pretrain:{label}", {}).get("cases", {})
        ref = cases.get("reference_fp16", {}).get("images_per_s")
        entry = {}
        for variant in ("ours_bf16", "ours_bf16_compile"):
            if variant in cases and ref:
                entry[f"{variant}_vs_reference_fp16"] = cases[variant]["images_per_s"] / ref
        best = max((cases[v]["images_per_s"], v) for v in cases) if cases else None
        if best:
            entry["best"] = best[1]
            entry["best_images_per_s"] = best[0]
            entry["best_mfu"] = cases[best[1]].get("mfu")
        if entry:
            s[label] = entry
    enc = report["sections"].get("encoder", {}).get("cases", {})
    if {"visible_only", "mask_token_in_encoder"} <= set(enc):
        fast, slow = enc["visible_only"], enc["mask_token_in_encoder"]
        s["encoder_speedup"] = fast["images_per_s"] / slow["images_per_s"]
        s["encoder_flops_ratio"] = slow["flops_per_image"] / fast["flops_per_image"]
    dec = report["sections"].get("decode", {}).get("cases", {})
    core = dec.get("cpu_loader_one_core", {}).get("images_per_s")
    if core:
        s["cpu_cores_per_gpu"] = {label: entry["best_images_per_s"] / core for label, entry in s.items()
                                  if isinstance(entry, dict) and "best_images_per_s" in entry}
        if "gpu_decode_crop_resize" in dec:
            s["gpu_decode_vs_one_core"] = dec["gpu_decode_crop_resize"]["images_per_s"] / core
    large = s.get("ViT-L/16", {})
    s["targets"] = {
        "vit_l_mfu_ge_45pct": None if large.get("best_mfu") is None else large["best_mfu"] >= 0.45,
        "vit_l_ge_1.5x_reference_fp16": (None if not large else
                                         max(large.get("ours_bf16_vs_reference_fp16", 0),
                                             large.get("ours_bf16_compile_vs_reference_fp16", 0)) >= 1.5),
    }
    return s


def _print_report(report: dict) -> None:
    info = report["device"]
    print(f"device: {info.get('device')}  torch {info['torch']}  peak {report['peak_tflops']} TFLOP/s (bf16)")
    for section, result in report["sections"].items():
        head = f"[{section}] {result['status']} in {result['seconds']:.0f} s"
        print(head + (f": {result['error'][:300]}" if "error" in result else ""))
        for case, r in result.get("cases", {}).items():
            parts = [f"{r['images_per_s']:.1f} img/s"]
            if "batch" in r:
                parts.append(f"batch {r['batch']}")
            if r.get("mfu") is not None:
                parts.append(f"MFU {r['mfu']:.1%}")
            if r.get("peak_mem_gib") is not None:
                parts.append(f"peak {r['peak_mem_gib']:.1f} GiB")
            if r.get("first_step_s"):
                parts.append(f"first step {r['first_step_s']:.1f} s")
            if "decoder" in r:
                parts.append(r["decoder"])
            print(f"  {case:24s} " + ", ".join(parts))
    print("summary: " + json.dumps(report["summary"], indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="the same code paths on tiny shapes on the CPU (seconds)")
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--budget-s", type=float, default=None, help="total seconds (default 450; 240 with --dry)")
    parser.add_argument("--sections", default=None, help="comma-separated subset, e.g. 'pretrain:ViT-L/16,decode'")
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak for MFU (default: 790 on H100/H200)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (default 15; 2 with --dry)")
    parser.add_argument("--inline", action="store_true", help="run sections in this process (debugging; no hard timeout)")
    parser.add_argument("--inject-failure", default=None, help=argparse.SUPPRESS)  # tests: a failing case
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--params", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--records", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(args.worker, json.loads(args.params), args.records)

    started = time.perf_counter()
    budget = args.budget_s if args.budget_s is not None else (240.0 if args.dry else 450.0)
    wanted = [s for s, _ in SECTIONS]
    if args.sections:
        wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in dict(SECTIONS)]
        if unknown:
            parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(dict(SECTIONS))}")
    info = _device_info(args.dry)
    peak = args.peak_tflops
    if peak is None:
        peak = next((v for k, v in MEASURED_PEAK_TFLOPS.items() if k in str(info.get("device"))), None)
    params = {"dry": args.dry, "peak_tflops": peak, "steps": args.steps or (2 if args.dry else 15),
              "warmup": 1 if args.dry else 3, "inject_failure": args.inject_failure}
    report = {"device": info, "peak_tflops": peak, "budget_s": budget, "sections": {}}
    # Boxes shrink in proportion when the budget is smaller than they add up to (always with --dry).
    # With --dry every box is the same: the steps are tiny, a process's start is most of it.
    boxes = {s: (40 if args.dry else b) for s, b in SECTIONS if s in wanted}
    scale = min(1.0, (budget - (time.perf_counter() - started) - 5) / sum(boxes.values()))
    for section in wanted:
        left = budget - (time.perf_counter() - started) - 5  # keep time to write the report
        box = min(boxes[section] * scale, left)
        if box < (5 if args.dry else 20):
            report["sections"][section] = {"status": "skipped", "seconds": 0.0, "box_s": 0.0, "cases": {},
                                           "error": f"not run: {max(left, 0):.0f} s of the budget left"}
            continue
        print(f"[{section}] running (at most {box:.0f} s) ...", flush=True)
        report["sections"][section] = run_section(section, box, params, args.inline)
    report["summary"] = summarize(report)
    report["seconds"] = time.perf_counter() - started
    report["load_avg"] = os.getloadavg()
    _print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")
    return 0 if all(r["status"] == "ok" for r in report["sections"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
