"""`maectl demo`: the README's first command. Runs `pretrain-vit-tiny-demo` on this machine in the
foreground — the built-in dataset (generated on first use), a tiny MAE, a few epochs — and says
what came out: the loss, the kNN accuracy, the reconstruction PNGs, how to open MLflow."""

from __future__ import annotations

DEMO_EXPERIMENT = "pretrain-vit-tiny-demo"


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help=f"run the {DEMO_EXPERIMENT} job here, in a few minutes on CPU",
                                   description=f"= maectl submit {DEMO_EXPERIMENT} --backend local --wait, plus a summary.")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.epochs=2")
    parser.set_defaults(handler=run)


def run(args) -> int:
    import sys
    import time

    from ..progress import follow
    from ..submission import submit
    from .submit import print_submitted

    started = time.monotonic()
    record, prepared = submit(DEMO_EXPERIMENT, args.overrides, backend="local", say=lambda m: print(m, file=sys.stderr, flush=True))
    print_submitted(record, prepared)
    code = follow(record)
    summarize(record, prepared, time.monotonic() - started)
    return code


def summarize(record, prepared, seconds: float) -> None:
    from pathlib import Path

    from ..submission import mlflow_ui_hint
    from ._common import console, read_metrics

    records = read_metrics(record.output_dir)
    epochs = [r["metrics"] for r in records if "epoch/loss" in r.get("metrics", {})]
    knn = [r["metrics"]["knn/top1"] for r in records if "knn/top1" in r.get("metrics", {})]
    out = console()
    out.print(f"\n[bold]demo summary[/] ({seconds / 60:.1f} min)")
    if epochs:
        losses = " -> ".join(f"{e['epoch/loss']:.3f}" for e in epochs)
        out.print(f"  loss per epoch   {losses}", markup=False)
    if knn:
        out.print(f"  kNN top-1        {knn[-1]:.1f}% (chance: {100 / 10:.0f}% on the 10 demo classes)", markup=False)
    images = sorted(Path(record.output_dir, "images").glob("*.png")) if "://" not in record.output_dir else []
    if images:
        out.print(f"  reconstructions  {images[-1]}" + (f" (and {len(images) - 1} earlier)" if len(images) > 1 else ""), markup=False)
    encoder = Path(record.output_dir, "final", "encoder_timm.pt")
    if encoder.exists():
        out.print(f"  encoder (timm)   {encoder}", markup=False)
    if record.tracking_uri:
        out.print(f"  MLflow           {mlflow_ui_hint(prepared.request.spec.tracking.uri)}", markup=False)
