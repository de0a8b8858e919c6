"""Tracking never holds training up: `python -m bench.tracking [--outage hang|down] [--rounds N]`.

The tiny model (mae_vit_micro_patch4_32, 32 px) trains in the real engine, through the sink the
runner uses (orchestrator.tracking.open_run), against a private `mlflow server` that this
benchmark starts on its own port with its own SQLite file (never the shared stack's). In each
round, side by side:

- `baseline`: the server answers throughout;
- `outage`: 15 s into training the server is stopped for 60 s (`hang`: SIGSTOP, so requests are
  accepted and never answered, the nastier case; `down`: killed and restarted on the same port
  and database), then training goes on for a few seconds and the run is closed (the flush).

Printed per variant: steps trained in the 60 s window, the median / p95 / max step interval in it,
the time the loop spent inside sink calls in it, the flush at close, and whether every metric
arrived. Variants are interleaved (baseline, outage, baseline, outage, ...); medians and minima
over rounds, with the load average: this machine is shared.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

WARMUP_S, OUTAGE_S, TAIL_S = 15.0, 60.0, 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnMLflowServer:
    """A private `mlflow server` (one worker, SQLite, proxied artifacts) in its own process group,
    which can be hung (SIGSTOP), resumed, killed and restarted on the same port and database."""

    def __init__(self, home: Path, port: int | None = None):
        self.home, self.port = Path(home), port or free_port()
        self.proc: subprocess.Popen | None = None
        self.stopped = False

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180.0) -> "OwnMLflowServer":
        (self.home / "artifacts").mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        mlflow = str(Path(sys.executable).parent / "mlflow")
        log = open(self.home / "server.log", "ab")
        self.proc = subprocess.Popen(
            [mlflow, "server", "--backend-store-uri", f"sqlite:///{self.home / 'mlflow.db'}",
             "--artifacts-destination", str(self.home / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            cwd=self.home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}; see {self.home / 'server.log'}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"mlflow server on port {self.port} not healthy after {timeout_s:g} s; see {self.home / 'server.log'}")

    def _signal_group(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def hang(self) -> None:
        self._signal_group(signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        self._signal_group(signal.SIGCONT)
        self.stopped = False

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.stopped:
            self.resume()
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *_exc):
        self.kill()


def make_shards(root: Path) -> str:
    from mae_core.data.demo import build_demo_shards

    build_demo_shards(str(root / "images"), str(root / "shards"), num_classes=10, train_per_class=40, val_per_class=10,
                      image_size=48, seed=0, maxcount=50)
    return str(root / "shards")


def job_spec(uri: str, experiment: str, shards: str, out: Path, *, epochs: int = 1000, batch: int = 16) -> dict:
    """What the runner gets from a submit (orchestrator/runner.py), for the tiny model."""
    resolved = {
        "task": "pretrain", "output_dir": str(out),
        "model": {"name": "mae_vit_micro_patch4_32", "norm_pix_loss": True},
        "data": {"url": shards, "img_size": 32, "batch_size": batch, "num_workers": 0, "shuffle_buffer": 64},
        "optim": {"warmup_epochs": 1},
        "train": {"epochs": epochs, "log_every": 5},
        "checkpoint": {"every_steps": 200, "keep_last": 1, "keep_every_epochs": None, "resume": "never"},
        "monitor": {"recon_every_epochs": 5, "recon_images": 4},
    }
    handle = f"bench-{uuid.uuid4().hex[:6]}"
    return {"handle": handle, "backend": "local", "experiment": "bench-tracking", "source": "bench/tracking.py", "overrides": [],
            "submitted": {"user": "bench", "git_commit": None},
            "tracking": {"enabled": True, "uri": uri, "experiment": experiment}, "resolved": resolved}


class ClockedSink:
    """The runner's sink (MLflow + metrics.jsonl, as orchestrator/runner.py fans out), with the
    wall time of every optimizer step and of every sink call recorded."""

    def __init__(self, sinks, on_first_step=None):
        self.sinks, self.on_first_step = sinks, on_first_step
        self.steps: list[tuple[float, int]] = []  # (time, step) of each train/loss record
        self.inside: list[tuple[float, float]] = []  # (time, seconds spent in the sink call)
        self.sent: dict[str, set[int]] = {}

    def log_metrics(self, metrics, step):
        wall, t0 = time.time(), time.perf_counter()  # wall clock: comparable across processes
        for s in self.sinks:
            s.log_metrics(metrics, step)
        self.inside.append((wall, time.perf_counter() - t0))
        if "train/loss" in metrics:
            if not self.steps and self.on_first_step:
                self.on_first_step()
            self.steps.append((wall, step))
        for key, value in metrics.items():
            if value == value and abs(value) != float("inf"):
                self.sent.setdefault(key, set()).add(int(step))

    def log_artifact(self, local_path, artifact_path=None):
        wall, t0 = time.time(), time.perf_counter()
        for s in self.sinks:
            s.log_artifact(local_path, artifact_path)
        self.inside.append((wall, time.perf_counter() - t0))

    def close(self):
        pass


def run_training(uri: str, shards: str, out: Path, experiment: str, stop, on_first_step=None) -> dict:
    """Train the tiny model through the runner's sink until `stop` is requested (a checkpoint, then
    Preempted); close the run (the flush); count the metrics the server does not have."""
    from mlflow.tracking import MlflowClient

    from mae_core.engine import JsonlSink, Preempted, load_run_config, train
    from orchestrator.tracking import open_run

    spec = job_spec(uri, experiment, shards, out)
    tracker = open_run(spec, str(out))
    assert tracker.run_id, "the benchmark's own server did not answer"
    jsonl = JsonlSink(f"{out}/metrics.jsonl")
    sink = ClockedSink([tracker, jsonl], on_first_step)
    try:
        train(load_run_config(spec["resolved"]), sink, None, stop)
    except Preempted:
        pass
    jsonl.close()
    t0 = time.perf_counter()
    complete = tracker.close("FINISHED")
    flush_s = time.perf_counter() - t0
    client = MlflowClient(uri)
    missing = sum(len(steps - {m.step for m in client.get_metric_history(tracker.run_id, key)}) for key, steps in sink.sent.items())
    return {"steps": sink.steps, "inside": sink.inside, "flush_s": flush_s, "missing": missing, "complete": complete,
            "status": client.get_run(tracker.run_id).info.status, "run_id": tracker.run_id,
            "metrics": sum(len(v) for v in sink.sent.values())}


def window_stats(raw: dict, start: float, end: float) -> dict:
    """Step intervals and time inside sink calls within [start, end) (wall-clock seconds)."""
    in_window = [(t, s) for t, s in raw["steps"] if start <= t < end]
    intervals = [b[0] - a[0] for a, b in zip(in_window, in_window[1:])]
    return {**{k: v for k, v in raw.items() if k not in ("steps", "inside")},
            "steps": len(in_window), "median_ms": 1000 * statistics.median(intervals), "p95_ms": 1000 * _quantile(intervals, 0.95),
            "max_ms": 1000 * max(intervals), "inside_s": sum(d for t, d in raw["inside"] if start <= t < end)}


def train_with_outage(server: OwnMLflowServer, shards: str, out: Path, *, outage: str | None, experiment: str,
                      warmup_s: float = WARMUP_S, outage_s: float = OUTAGE_S, tail_s: float = TAIL_S) -> dict:
    """In this process: train, with the outage (None, "hang", "down") in the middle of it."""
    from mae_core.engine.loop import StopFlag

    stop, first, window = StopFlag(), threading.Event(), {}

    def conductor():
        first.wait()
        window["start"] = outage_window(server, outage, warmup_s, outage_s)
        window["end"] = time.time()
        time.sleep(tail_s)
        stop.request()

    thread = threading.Thread(target=conductor, daemon=True)
    thread.start()
    raw = run_training(server.uri, shards, out, experiment, stop, on_first_step=first.set)
    thread.join()
    return window_stats(raw, window["start"], window["end"])


def outage_window(server: OwnMLflowServer, outage: str | None, warmup_s: float, outage_s: float) -> float:
    """Sleep `warmup_s`, then take the server away for `outage_s` and bring it back; returns when
    the window started (time.time())."""
    time.sleep(warmup_s)
    start = time.time()
    if outage == "hang":
        server.hang()
    elif outage == "down":
        server.kill()
    time.sleep(max(0.0, start + outage_s - time.time()))
    if outage == "hang":
        server.resume()
    elif outage == "down":
        server.start()
    return start


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- side by side: two training processes at once, one server each -------------------------------
def _worker(args) -> int:
    """One training process (`--worker`): trains until SIGUSR1, then writes its raw figures."""
    import json

    from mae_core.engine.loop import StopFlag

    stop = StopFlag()
    signal.signal(signal.SIGUSR1, stop.request)
    ready = Path(args.result).with_suffix(".started")
    raw = run_training(args.uri, args.shards, Path(args.out), "bench-tracking", stop, on_first_step=lambda: ready.write_text("1"))
    Path(args.result).write_text(json.dumps(raw))
    return 0


def side_by_side(shards: str, root: Path, base: OwnMLflowServer, hit: OwnMLflowServer, round_: int, outage: str, outage_s: float) -> dict:
    """The baseline and the outage variant train at the same time, on the same (shared, noisy)
    CPUs, so that the machine's load falls on both alike; only the second one's server goes away."""
    import json

    procs, results = {}, {}
    for variant, server in (("baseline", base), ("outage", hit)):
        result = root / f"{variant}-{round_}.json"
        procs[variant] = (subprocess.Popen([sys.executable, "-m", "bench.tracking", "--worker", "--uri", server.uri, "--shards", shards,
                                            "--out", str(root / f"{variant}-{round_}"), "--result", str(result)],
                                           stdout=subprocess.DEVNULL, stderr=open(root / f"{variant}-{round_}.log", "w")), result)
    deadline = time.monotonic() + 300
    while not all(r.with_suffix(".started").exists() for _, r in procs.values()):
        if time.monotonic() > deadline or any(p.poll() is not None for p, _ in procs.values()):
            raise RuntimeError(f"a training process did not start; see {root}/*-{round_}.log")
        time.sleep(0.2)
    start = outage_window(hit, outage, WARMUP_S, outage_s)
    end = time.time()
    time.sleep(TAIL_S)
    for proc, _ in procs.values():
        proc.send_signal(signal.SIGUSR1)
    for variant, (proc, result) in procs.items():
        if proc.wait(timeout=600) != 0:
            raise RuntimeError(f"{variant} exited {proc.returncode}; see {root}/{variant}-{round_}.log")
        results[variant] = window_stats(json.loads(result.read_text()), start, end)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracking", description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", choices=("hang", "down"), default="hang", help="SIGSTOP the server, or kill and restart it")
    parser.add_argument("--rounds", type=int, default=2, help="side-by-side rounds")
    parser.add_argument("--outage-s", type=float, default=OUTAGE_S)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--uri", "--shards", "--out", "--result"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # One compute thread: on a shared, loaded machine torch's spinning threads make step times
    # swing by 10x (docs/benchmarks.md, Training), which would drown what is measured here.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.worker:
        return _worker(args)

    results: dict[str, list[dict]] = {"baseline": [], "outage": []}
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        root = Path(tmp)
        shards = make_shards(root)
        with OwnMLflowServer(root / "mlflow-base") as base, OwnMLflowServer(root / "mlflow-outage") as hit:
            print(f"# two own mlflow servers ({base.uri} stays up, {hit.uri} gets the outage: {args.outage}, {args.outage_s:g} s), "
                  f"both trainings at once; load average {os.getloadavg()}", flush=True)
            for round_ in range(args.rounds):
                for variant, r in side_by_side(shards, root, base, hit, round_, args.outage, args.outage_s).items():
                    results[variant].append(r)
                    print(f"round {round_ + 1} {variant:8s}: {r['steps']:5d} steps in the window, step median {r['median_ms']:.1f} ms, "
                          f"p95 {r['p95_ms']:.1f} ms, max {r['max_ms']:.0f} ms, in sink calls {r['inside_s']:.3f} s; "
                          f"flush at close {r['flush_s']:.1f} s; {r['metrics']} metrics, missing {r['missing']}, run {r['status']}; "
                          f"load {os.getloadavg()[0]:.2f}", flush=True)
    print()
    print(f"| variant | steps in the {args.outage_s:g} s window (median, min) | step median ms (median, min) | step p95 ms (median, min) | "
          "max step ms | time in sink calls s (max) | flush at close s (median, max) | metrics missing |")
    print("|---|---|---|---|---|---|---|---|")
    for variant, rows in results.items():
        def col(key, fmt="{:.1f}", low=min):
            values = [r[key] for r in rows]
            return f"{fmt.format(statistics.median(values))}, {fmt.format(low(values))}"
        print(f"| {variant} | {col('steps', '{:.0f}')} | {col('median_ms')} | {col('p95_ms')} | {max(r['max_ms'] for r in rows):.0f} | "
              f"{max(r['inside_s'] for r in rows):.3f} | {col('flush_s', low=max)} | {sum(r['missing'] for r in rows)} |")
    ratios = [o["median_ms"] / b["median_ms"] for b, o in zip(results["baseline"], results["outage"])]
    steps = [o["steps"] / b["steps"] for b, o in zip(results["baseline"], results["outage"])]
    print(f"\nper round, outage / baseline: step time {', '.join(f'{x:.3f}' for x in ratios)}; steps in the window "
          f"{', '.join(f'{x:.3f}' for x in steps)} (target: within 10%); load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
