"""How fast `maectl` answers: `--help`, `show`, a SLURM dry-run and a refused override, each a fresh
process, interleaved over rounds; prints the minimum and median of each and its ratio to `--help`.

    python -m bench.cli [--rounds 7]

Also reports which heavy libraries each command imported (none should: validating, showing and
dry-running read plain-data configs only).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from orchestrator.locations import PROJECT_ROOT

HEAVY = ("torch", "torchvision", "webdataset", "mlflow", "ray", "submitit")
COMMANDS = {
    "--help": ["--help"],
    "show": ["show", "pretrain-vit-h-1600ep"],
    "slurm dry-run": ["submit", "pretrain-vit-h-1600ep", "--backend", "slurm", "--dry-run"],
    "refused override": ["submit", "pretrain-vit-h-1600ep", "--backend", "slurm", "optim.base_lr=1e400"],
}
# Run the CLI and report which heavy modules ended up imported (on stderr, after the command).
_PROBE = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write('\\nHEAVY=' + ','.join(m for m in %r if m in sys.modules) + '\\n'))\n"
    "from orchestrator.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
) % (HEAVY,)


def _run(args: list[str], env: dict) -> tuple[float, int, str]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    heavy = next((line[len("HEAVY="):] for line in result.stderr.splitlines() if line.startswith("HEAVY=")), "?")
    return elapsed, result.returncode, heavy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        # Outputs under the project, as by default: /tmp is node-local, which an 8-node dry-run refuses.
        env = {**os.environ, "MAECTL_HOME": f"{tmp}/home", "MAECTL_OUTPUT_ROOT": str(PROJECT_ROOT / "out")}
        times: dict[str, list[float]] = {name: [] for name in COMMANDS}
        codes: dict[str, int] = {}
        heavy: dict[str, str] = {}
        _run(["--help"], env)  # warm the page cache
        for _ in range(args.rounds):
            for name, command in COMMANDS.items():  # interleaved: a noisy spell hits every command alike
                elapsed, codes[name], heavy[name] = _run(command, env)
                times[name].append(elapsed)
    base = min(times["--help"])
    print(f"maectl response times, {args.rounds} interleaved rounds, load average {os.getloadavg()[0]:.1f}")
    print(f"{'command':<18} {'min s':>7} {'median s':>9} {'x --help':>9} {'exit':>5}  heavy imports")
    for name in COMMANDS:
        low, mid = min(times[name]), statistics.median(times[name])
        print(f"{name:<18} {low:7.3f} {mid:9.3f} {low / base:9.2f} {codes[name]:5d}  {heavy[name] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
