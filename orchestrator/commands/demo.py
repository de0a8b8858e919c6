"""`maectl demo`: the README's first command. Runs `pretrain-vit-tiny-demo` on this machine in the
foreground — the built-in dataset (generated on first use), a tiny MAE, 40 epochs — then, as a
pipeline follow-up, `linprobe-vit-tiny-demo` on its final checkpoint, and says what came out: the
loss, the accuracy of the same encoder at its random initialisation and after pretraining (kNN
and a feature probe on held-out images, measured in the pretraining run itself), the linear
probe's top-1, the reconstruction PNGs and how to open MLflow."""

from __future__ import annotations

DEMO_EXPERIMENT = "pretrain-vit-tiny-demo"
DEMO_PROBE = "linprobe-vit-tiny-demo"
DEMO_CLASSES = 10  # mae_core.data.demo's default


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help=f"run the {DEMO_EXPERIMENT} job and its linear probe here, in a few minutes on CPU",
        description=f"= maectl submit {DEMO_EXPERIMENT} 'pipeline.then=[{DEMO_PROBE}]' --backend local --wait, plus a summary.")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of the pretraining, e.g. train.epochs=2")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--pipeline", dest="pipeline", action="store_true", default=True,
                       help=f"then run {DEMO_PROBE} on the final checkpoint (the default)")
    group.add_argument("--no-pipeline", dest="pipeline", action="store_false", help="pretraining only")
    parser.set_defaults(handler=run)


def run(args) -> int:
    import sys
    import time

    from ..pipelines import submit
    from ..progress import follow
    from .submit import print_submitted

    started = time.monotonic()
    overrides = list(args.overrides)
    if args.pipeline and not any(o.split("=", 1)[0].strip() in ("pipeline", "pipeline.then") for o in overrides):
        overrides.append(f"pipeline.then=[{DEMO_PROBE}]")
    record, prepared, followups = submit(DEMO_EXPERIMENT, overrides, backend="local",
                                         say=lambda m: print(m, file=sys.stderr, flush=True))
    print_submitted(record, prepared, followups)
    code = follow(record)
    if followups:  # after a failed pretraining they end at once, CANCELLED: its code wins
        from .sweep import follow_jobs

        rest = follow_jobs([f.handle for f in followups])
        code = code or rest
    summarize(record, prepared, time.monotonic() - started, followups)
    return code


def _last(records: list[dict], name: str) -> float | None:
    values = [r["metrics"][name] for r in records if name in r.get("metrics", {})]
    return float(values[-1]) if values else None


def summarize(record, prepared, seconds: float, followups=()) -> None:
    from pathlib import Path

    from ..store import open_store
    from ..submission import mlflow_ui_hint
    from ._common import console, read_metrics

    records = read_metrics(record.output_dir)
    epochs = [r["metrics"] for r in records if "epoch/loss" in r.get("metrics", {})]
    out = console()
    out.print(f"\n[bold]demo summary[/] ({seconds / 60:.1f} min)")
    if epochs:
        losses = [f"{e['epoch/loss']:.3f}" for e in epochs]
        shown = losses if len(losses) <= 8 else losses[:4] + ["..."] + losses[-3:]
        out.print(f"  loss per epoch   {' -> '.join(shown)}", markup=False)
    chance = f"chance {100 / DEMO_CLASSES:.0f}%"
    for name, label in (("knn/top1", "kNN top-1"), ("probe/top1", "feature probe")):
        trained, baseline = _last(records, name), _last(records, f"{name}_random_init")
        if trained is None:
            continue
        line = f"  {label:<16} {trained:.1f}% after pretraining"
        if baseline is not None:
            line += f", {baseline:.1f}% at random init ({trained - baseline:+.1f} points; {chance})"
        else:
            line += f" ({chance})"
        out.print(line, markup=False)
    store = open_store()
    for followup in followups:
        job = store.get(followup.handle) or followup
        top1 = _last(read_metrics(job.output_dir), "eval/top1")
        state = getattr(job.state, "value", job.state)
        result = f"top-1 {top1:.1f}% on the val images" if top1 is not None else "no result"
        out.print(f"  linear probe     {result} ({job.experiment}, {job.handle}, {state})", markup=False)
    images = sorted(Path(record.output_dir, "images").glob("*.png")) if "://" not in record.output_dir else []
    if images:
        out.print(f"  reconstructions  {images[-1]}" + (f" (and {len(images) - 1} earlier)" if len(images) > 1 else ""), markup=False)
    encoder = Path(record.output_dir, "final", "encoder_timm.pt")
    if encoder.exists():
        out.print(f"  encoder (timm)   {encoder}", markup=False)
    if record.tracking_uri:
        out.print(f"  MLflow           {mlflow_ui_hint(prepared.request.spec.tracking.uri)}", markup=False)
