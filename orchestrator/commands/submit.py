"""`maectl submit NAME|PATH [KEY=VALUE ...] [--backend B] [--dry-run] [--wait]`."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "submit", help="validate an experiment and run it (detached, or --wait)",
        description="Validate an experiment file (a name under jobs/ or a path) with overrides, then run it on a backend.",
        epilog="example: maectl submit pretrain-vit-b-800ep train.epochs=10 model.mask_ratio=0.9 --dry-run",
    )
    add_target_arguments(parser)
    parser.add_argument("--backend", choices=["local", "slurm", "ray"],
                        help="default: the experiment's `backend:`, else the site file's, else detected (SLURM, Ray, local)")
    parser.add_argument("--dry-run", action="store_true", help="print exactly what would run; submit and record nothing")
    parser.add_argument("--wait", action="store_true", help="stay in the foreground with progress; exit with the job's status")
    parser.set_defaults(handler=run)


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="experiment name (see `maectl list`) or path to a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override any key, e.g. train.epochs=10 resources.nodes=2")


def run(args) -> int:
    from ..pipelines import prepare_followups, render_followups, submit
    from ..submission import prepare, render_dry_run

    if args.dry_run:
        prepared = prepare(args.experiment, args.overrides, backend=args.backend, dry_run=True)
        print(f"# backend: {prepared.resolved.spec.backend} ({prepared.resolved.backend_reason})", file=sys.stderr)
        followups = prepare_followups(prepared, dry_run=True)  # a pipeline's: checked and shown too
        sys.stdout.write(render_dry_run(prepared))
        sys.stdout.write(render_followups(prepared, followups))
        legend = ", ".join(f"{token} = {real}" for real, token in sorted(_legend(prepared), key=lambda kv: kv[1]))
        print(f"# dry-run: nothing submitted or recorded. {legend}", file=sys.stderr)
        return 0
    record, prepared, followups = submit(args.experiment, args.overrides, backend=args.backend, say=_say)
    print_submitted(record, prepared, followups)
    if args.wait:
        from ..progress import follow

        code = follow(record)
        if followups:  # after a failed pretraining they end at once, CANCELLED: shown, but its code wins
            from .sweep import follow_jobs

            rest = follow_jobs([f.handle for f in followups])
            code = code or rest
        return code
    return 0


def _legend(prepared):
    from ..submission import placeholders

    return placeholders(prepared.resolved).mapping


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def print_submitted(record, prepared, followups=()) -> None:
    from ..submission import mlflow_ui_hint
    from ._common import console

    out = console()
    out.print(f"[bold green]submitted[/] [bold]{record.handle}[/]  {record.experiment} ({record.source}) on {record.backend} "
              f"({prepared.resolved.backend_reason}), {prepared.resolved.spec.resources.describe()}", markup=True)
    for note in prepared.resolved.notes:
        out.print(f"  {note}", markup=False)
    out.print(f"  output   {record.output_dir}", markup=False)
    out.print(f"  follow   maectl logs {record.handle} --follow", markup=False)
    out.print(f"  status   maectl status {record.handle}", markup=False)
    if record.tracking_uri:
        out.print(f"  MLflow   experiment {prepared.resolved.tracking_experiment!r}: {mlflow_ui_hint(prepared.request.spec.tracking.uri)}", markup=False)
    for followup in followups:
        out.print(f"  then     [bold]{followup.handle}[/]  {followup.experiment} from {record.handle}'s final checkpoint: "
                  f"[{followup.state.style}]{followup.state.value}[/]" + (f" ({followup.message})" if followup.message else ""))
