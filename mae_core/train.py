"""Library entry point, no orchestrator needed:

    python -m mae_core.train CONFIG.yaml [key.path=value ...]
    torchrun --nproc-per-node 2 -m mae_core.train CONFIG.yaml train.epochs=2

Metrics go to <output_dir>/metrics.jsonl (rank 0). Exit codes (mae_core.exitcodes.ExitCode):
0 done, 2 bad config or input, 3 stopped on request after a checkpoint, 4 non-finite loss.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from .exitcodes import ExitCode


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`a.b.c=value` (value parsed as YAML) into a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_config_file(path: str, overrides: list[str]):
    from .engine.config import load_run_config

    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return load_run_config(apply_overrides(data, overrides))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mae_core.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="run config YAML (see mae_core/engine/config.py)")
    parser.add_argument("overrides", nargs="*", help="key.path=value")
    parser.add_argument("--metrics", help="JSON-lines metrics file (default <output_dir>/metrics.jsonl)")
    args = parser.parse_args(argv)

    from .engine import JsonlSink, NonFiniteLoss, Preempted, train
    from .engine.distributed import env_from_environ
    from .structured import ConfigError

    try:
        cfg = load_config_file(args.config, args.overrides)
    except (ConfigError, ValueError, OSError) as err:
        print(f"error: {args.config}: {err}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    sink = None
    if env_from_environ().is_main:
        import fsspec

        fs, path = fsspec.core.url_to_fs(cfg.output_dir)
        fs.makedirs(path, exist_ok=True)
        sink = JsonlSink(args.metrics or f"{cfg.output_dir.rstrip('/')}/metrics.jsonl")
    try:
        summary = train(cfg, sink)
    except Preempted as err:
        print(f"stopped: {err}", file=sys.stderr)
        return ExitCode.PREEMPTED
    except NonFiniteLoss as err:
        print(f"error: {err}", file=sys.stderr)
        return ExitCode.NON_FINITE_LOSS
    finally:
        if sink is not None:
            sink.close()
    if env_from_environ().is_main:
        print(f"done: {summary.epochs_completed} epochs, {summary.final_step} steps; checkpoint {summary.last_checkpoint}")
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
