"""`maectl show NAME [KEY=VALUE ...]`: the fully resolved config and a compute estimate."""

from __future__ import annotations


def register(subparsers) -> None:
    from .submit import add_target_arguments

    parser = subparsers.add_parser("show", help="print an experiment's resolved config and compute estimate",
                                   description="Resolve and validate an experiment (with overrides) and estimate its compute.")
    add_target_arguments(parser)
    parser.add_argument("--backend", choices=["local", "slurm", "ray"], help="as for submit")
    parser.add_argument("--tflops", type=float, help="sustained TFLOP/s per GPU to assume (default 100: bf16 on an A100/H100-class GPU)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    import yaml

    from ..estimate import DEFAULT_TFLOPS_PER_GPU, estimate_run
    from ..experiments import resolve
    from ..redact import scrub_tree
    from ._common import console

    resolved = resolve(args.experiment, args.overrides, backend=args.backend)
    out = console()
    print(f"# {resolved.name}: {resolved.source_display}" + (f" with {' '.join(resolved.overrides)}" if resolved.overrides else ""))
    print(yaml.safe_dump(scrub_tree(resolved.resolved_tree()), sort_keys=False, default_flow_style=None, width=120), end="")
    for note in resolved.notes:
        print(f"# {note}")
    images, source = resolved.train_images, "dataset manifest"
    if images is None and resolved.uses_demo_data:
        images, source = DEMO_TRAIN_IMAGES, "the built-in demo dataset, generated on first submit"
    estimate = estimate_run(resolved.run, resolved.spec.resources, train_images=images, images_source=source,
                            tflops_per_gpu=args.tflops or DEFAULT_TFLOPS_PER_GPU)
    out.print(_estimate_table(resolved, estimate))
    return 0


# build_demo_shards' defaults: 10 classes x 100 training images.
DEMO_TRAIN_IMAGES = 1000


def _flops(value: float) -> str:
    for unit, size in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.3g} FLOP"


def _estimate_table(resolved, estimate):
    from rich.table import Table

    f, run, res = estimate.flops, resolved.run, resolved.spec.resources
    table = Table(title=f"compute estimate: {resolved.name}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    if run.task == "pretrain":
        c = run.model_config()
        where = "all tokens (mask token in encoder)" if c.mask_token_in_encoder else f"{f.encoder_tokens - 1} visible patches + cls"
        table.add_row("encoder / image", f"{_flops(f.encoder)} forward on {where}")
        table.add_row("decoder / image", f"{_flops(f.decoder)} forward on {f.decoder_tokens} tokens ({c.decoder_depth} x {c.decoder_embed_dim}-d)")
    else:
        table.add_row("encoder / image", f"{_flops(f.encoder)} forward on {f.encoder_tokens} tokens")
    table.add_row("forward / image", _flops(f.forward))
    table.add_row("training / image", f"{_flops(estimate.train_flops_per_image)}" + (" (forward + backward = 3x forward)" if run.task != "linprobe" else " (frozen encoder: forward only)"))
    table.add_row("images", f"{estimate.images:.4g} = {run.train.epochs} epochs x {estimate.images / run.train.epochs:,.0f} ({estimate.images_source})")
    table.add_row("total", _flops(estimate.total_flops))
    table.add_row("GPU-hours", f"{estimate.gpu_hours:,.1f} at an assumed {estimate.tflops_per_gpu:g} TFLOP/s sustained per GPU (--tflops)")
    if estimate.wall_hours is not None:
        table.add_row("wall clock", f"{estimate.wall_hours:,.1f} h on {res.describe()} ({estimate.gpus} GPUs)")
    else:
        table.add_row("wall clock", "no GPUs in resources: not estimated")
    return table
