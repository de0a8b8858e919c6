"""The `maectl` command line. Subcommands live in `orchestrator.commands.*`, one module each;
each module exposes `register(subparsers)` and imports heavy libraries only inside its handlers."""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import UsageError

# Module names under orchestrator.commands, in the order they appear in --help.
COMMAND_MODULES = ["demo", "submit", "sweep", "show", "list_", "status", "logs", "cancel", "report", "data", "model", "site"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maectl",
        description="Masked-autoencoder pretraining on SLURM, Ray and local machines, tracked in MLflow.",
    )
    parser.add_argument("--version", action="version", version=f"maectl {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides (KEY=VALUE) may come before, between or after flags: argparse stops filling the
    # `overrides` positional at the first flag, so collect what it left over, in order.
    args, extra = parser.parse_known_args(argv)
    if extra:
        target = next((name for name in ("overrides", "arguments") if hasattr(args, name)), None)
        if target is None or any(item.startswith("-") for item in extra):
            parser.parse_args(argv)  # argparse's own "unrecognized arguments" message, exit 2
        setattr(args, target, [*(getattr(args, target) or []), *extra])
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except UsageError as err:
        print(f"maectl: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("maectl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
