"""The training loop shared by every task: distribution, mixed precision, accumulation,
schedules, metrics, exact resume and atomic checkpoints."""

from __future__ import annotations

import contextlib
import math
import os
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..structured import ConfigError
from .checkpointing import CheckpointError, CheckpointManager, load_checkpoint
from .config import RunConfig
from .distributed import (
    DistEnv,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_object,
    env_from_environ,
    init_distributed,
    pick_device,
    shutdown_distributed,
)
from .rng import capture_rng, restore_rng, seed_everything
from .schedule import apply_lr, lr_at, scaled_lr
from .sinks import MetricSink, NullSink
from .tasks import TASKS


class NonFiniteLoss(RuntimeError):
    pass


class Preempted(RuntimeError):
    """Raised after a checkpoint was written because a stop was requested (signal)."""


@dataclass
class Position:
    """Where training stands: resumable to the optimizer step."""

    epoch: int = 0
    batch: int = 0  # next batch index within `epoch`
    opt_step: int = 0  # optimizer steps taken so far


@dataclass
class RunSummary:
    final_step: int
    epochs_completed: int
    resumed_from: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    last_checkpoint: str | None = None


class StopFlag:
    """Set by SIGUSR1 (or a caller): checkpoint at the next step boundary, then stop."""

    def __init__(self):
        self.requested = False

    def request(self, *_args) -> None:
        self.requested = True


def _autocast(precision: str, device: torch.device):
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


def _resolve_precision(requested: str, device: torch.device) -> str:
    if requested == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ValueError("train.precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    return requested


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _same_architecture(saved: dict, current: dict) -> list[str]:
    # Mask ratio, loss flags and the attention path may change between runs; shapes may not.
    shape_keys = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth", "decoder_num_heads", "mlp_ratio", "mask_token_in_encoder")
    return [k for k in shape_keys if k in saved and k in current and saved[k] != current[k]]


def cpu_compute_threads(num_workers: int, world_size: int) -> int:
    """Intra-op threads for a CPU rank: its share of the cores minus its loader workers.

    torch's default (all cores) oversubscribes as soon as loader workers or other ranks run
    beside it, and its spinning threads then stall: measured 32 vs 600 images/s for the tiny
    model on 2 cores with one loader worker (docs/benchmarks.md).
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    return max(1, cpus // max(local_ranks, 1) - num_workers)


def train(cfg: RunConfig, sink: MetricSink | None = None, env: DistEnv | None = None, stop: StopFlag | None = None,
          on_checkpoint: Callable[[str, int], None] | None = None) -> RunSummary:
    """Run `cfg` to completion (or until stopped). Only rank 0 writes to `sink` and checkpoints.

    `on_checkpoint(url, step)` runs on every rank once a checkpoint is complete (after the save's
    barrier): a launcher can tell its scheduler where the latest one is (Ray Train's report)."""
    env = env or env_from_environ()
    device = pick_device(cfg.train.device, env)
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(cpu_compute_threads(cfg.data.num_workers, env.world_size))
    init_distributed(env, device)
    try:
        return _Trainer(cfg, sink if env.is_main and sink is not None else NullSink(), env, device, stop or StopFlag(), on_checkpoint).run()
    finally:
        shutdown_distributed()


class _Trainer:
    def __init__(self, cfg: RunConfig, sink: MetricSink, env: DistEnv, device: torch.device, stop: StopFlag, on_checkpoint=None):
        self.cfg, self.sink, self.env, self.device, self.stop = cfg, sink, env, device, stop
        self.on_checkpoint = on_checkpoint
        self.precision = _resolve_precision(cfg.train.precision, device)
        self.out_dir = cfg.output_dir.rstrip("/")
        self.checkpoints = CheckpointManager(self.out_dir, cfg.checkpoint.keep_last, cfg.checkpoint.keep_every_epochs)
        self.last_checkpoint: str | None = None

    def log(self, message: str) -> None:
        if self.env.is_main:
            print(f"[maectl] {message}", flush=True)

    # -- setup ---------------------------------------------------------------------------
    def _preflight(self) -> int:
        """Everything that can fail before the first step: output location, dataset, sizes."""
        from ..data import build_loader

        if self.env.is_main:
            self.checkpoints.check_writable()
        probe = build_loader(self.cfg.data, split="train", mode=TASKS[self.cfg.task].loader_mode, rank=self.env.rank, world_size=self.env.world_size, epoch=0, seed=self.cfg.train.seed)
        batches = len(probe) // self.cfg.train.accum_iter * self.cfg.train.accum_iter
        if batches == 0:
            raise ValueError(
                f"dataset {self.cfg.data.url} gives {len(probe)} batches of {self.cfg.data.batch_size} per rank "
                f"on {self.env.world_size} rank(s): too few for one optimizer step with accum_iter={self.cfg.train.accum_iter}"
            )
        return batches

    def _resume_source(self) -> str | None:
        mode = self.cfg.checkpoint.resume
        if mode == "never":
            return None
        if mode == "auto":
            latest = self.checkpoints.latest()
            return latest.path if latest else None
        return mode

    def _restore(self, path: str, task, optimizer, scaler) -> Position:
        state = load_checkpoint(path)
        if state.get("task") != self.cfg.task:
            raise CheckpointError(f"checkpoint {path} is from a {state.get('task')} run, this run is {self.cfg.task}")
        mismatch = _same_architecture(state.get("model_config", {}), task.export_config())
        if mismatch:
            details = ", ".join(f"{k}: checkpoint {state['model_config'][k]} vs config {task.export_config()[k]}" for k in mismatch)
            raise CheckpointError(f"checkpoint {path} does not match the configured model ({details})")
        task.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        task.state = dict(state.get("task_state", {}))
        rng_states = state.get("rng", [])
        if len(rng_states) == self.env.world_size:
            restore_rng(rng_states[self.env.rank], task.rng_generators())
        else:
            self.log(f"checkpoint has RNG states for {len(rng_states)} ranks, this run has {self.env.world_size}: reseeding")
            seed_everything(self.cfg.train.seed + 7919 * state["position"]["opt_step"] + self.env.rank)
        return Position(**state["position"])

    def _save(self, task, optimizer, scaler, pos: Position, milestone: bool = False) -> None:
        rng = all_gather_objects(capture_rng(task.rng_generators()))
        if self.env.is_main:
            state = {
                "task": self.cfg.task,
                "model": task.model.state_dict(),
                "model_config": task.export_config(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},
                "position": {"epoch": pos.epoch, "batch": pos.batch, "opt_step": pos.opt_step},
                "rng": rng,
                "task_state": dict(task.state),
                "config": self.cfg.to_dict(),
                "world_size": self.env.world_size,
                "saved_at": time.time(),
            }
            self.last_checkpoint = self.checkpoints.save(state, pos.opt_step, milestone=milestone)
        self.last_checkpoint = broadcast_object(self.last_checkpoint)
        barrier()
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.last_checkpoint, pos.opt_step)

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> RunSummary:
        from ..data import build_loader

        cfg, env = self.cfg, self.env
        seed_everything(cfg.train.seed + env.rank)
        batches_per_epoch = self._preflight()
        task = TASKS[cfg.task](cfg, env, self.device)
        effective_batch = cfg.data.batch_size * cfg.train.accum_iter * env.world_size
        peak_lr = cfg.optim.lr if cfg.optim.lr is not None else scaled_lr(cfg.optim.base_lr, effective_batch)
        optimizer = task.build_optimizer(peak_lr)
        scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None

        pos, resumed_from = Position(), self._resume_source()
        if cfg.task != "pretrain" and not resumed_from and not cfg.checkpoint.init_from:
            raise ConfigError("checkpoint.init_from", f"a {cfg.task} run needs pretrained weights (ours or an official MAE checkpoint)")
        if resumed_from:
            pos = self._restore(resumed_from, task, optimizer, scaler)
            self.log(f"resumed from {resumed_from} at epoch {pos.epoch}, batch {pos.batch}, step {pos.opt_step}")

        step_model: nn.Module = task.model
        if env.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            step_model = DDP(task.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.train.compile:
            step_model = torch.compile(step_model)

        if env.is_main:
            self.sink.log_metrics({"config/effective_batch": effective_batch, "config/peak_lr": peak_lr, "config/world_size": env.world_size}, pos.opt_step)
        initial = task.start_of_training() if pos.opt_step == 0 else dict(task.state.get("random_init", {}))
        if initial and env.is_main and pos.opt_step == 0:
            self.sink.log_metrics(initial, 0)
            self.log("before the first step: " + ", ".join(f"{k} {v:.4g}" for k, v in initial.items()))
        previous_handler = signal.signal(signal.SIGUSR1, self.stop.request) if _in_main_thread() else None
        try:
            summary_metrics = initial | self._epochs(task, step_model, optimizer, scaler, pos, batches_per_epoch, peak_lr, build_loader)
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGUSR1, previous_handler)
        if env.is_main:
            self._export_final(task)
        return RunSummary(pos.opt_step, pos.epoch, resumed_from, summary_metrics, self.last_checkpoint)

    def _epochs(self, task, step_model, optimizer, scaler, pos: Position, batches_per_epoch: int, peak_lr: float, build_loader) -> dict:
        cfg, env = self.cfg, self.env
        accum = cfg.train.accum_iter
        total_steps = cfg.train.epochs * batches_per_epoch // accum
        if cfg.train.max_steps is not None:
            total_steps = min(total_steps, cfg.train.max_steps)
        params = [p for p in task.model.parameters() if p.requires_grad]
        last_save_time = time.monotonic()
        run_start, start_step = time.monotonic(), pos.opt_step
        summary: dict[str, float] = {}
        task.model.train()

        while pos.epoch < cfg.train.epochs and pos.opt_step < total_steps:
            epoch_start = time.monotonic()
            loader = build_loader(cfg.data, split="train", mode=task.loader_mode, rank=env.rank, world_size=env.world_size, epoch=pos.epoch, seed=cfg.train.seed, start_batch=pos.batch)
            epoch_loss = torch.zeros(2)  # (sum of step losses, steps)
            step_start = time.monotonic()
            micro_losses = []
            for i, (images, labels) in enumerate(loader, start=pos.batch):
                if i >= batches_per_epoch or pos.opt_step >= total_steps:
                    break
                last_micro = (i + 1) % accum == 0
                if i % accum == 0:
                    apply_lr(optimizer, lr_at(pos.epoch + i / batches_per_epoch, lr=peak_lr, min_lr=cfg.optim.min_lr, warmup_epochs=cfg.optim.warmup_epochs, epochs=cfg.train.epochs))
                images = images.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
                # No gradient all-reduce on accumulation micro-steps.
                sync = contextlib.nullcontext() if last_micro or not env.distributed else step_model.no_sync()
                with sync:
                    with _autocast(self.precision, self.device):
                        loss = task.loss(step_model, images, labels)
                    value = all_reduce_sum(loss.detach().float().cpu().reshape(1)) / env.world_size
                    if not math.isfinite(value.item()):
                        raise NonFiniteLoss(
                            f"loss is {value.item()} at optimizer step {pos.opt_step + 1} (epoch {pos.epoch}, batch {i}); "
                            f"stopping. The last good checkpoint is {self.last_checkpoint or self._describe_latest()}"
                        )
                    micro_losses.append(value.item())
                    scaled = loss / accum
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                if not last_micro:
                    continue

                if scaler is not None:
                    scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_grad or float("inf"))
                if scaler is None and not math.isfinite(float(grad_norm)):
                    # A finite loss with overflowing gradients: stepping would write inf/NaN into the
                    # weights (and the next checkpoint). fp16's scaler skips such steps itself.
                    raise NonFiniteLoss(
                        f"gradient norm is {float(grad_norm)} at optimizer step {pos.opt_step + 1} (epoch {pos.epoch}, batch {i}); "
                        f"stopping. The last good checkpoint is {self.last_checkpoint or self._describe_latest()}"
                    )
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                pos.opt_step += 1
                pos.batch = i + 1
                step_loss = sum(micro_losses) / len(micro_losses)
                micro_losses.clear()
                epoch_loss += torch.tensor([step_loss, 1.0])

                if env.is_main:
                    now = time.monotonic()
                    step_time = now - step_start
                    done = pos.opt_step - start_step
                    eta = (now - run_start) / max(done, 1) * (total_steps - pos.opt_step)
                    metrics = {"train/loss": step_loss, "train/lr": optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0)}
                    if pos.opt_step % cfg.train.log_every == 0 or pos.opt_step == total_steps:
                        metrics.update({
                            "train/grad_norm": float(grad_norm),
                            "train/images_per_s": cfg.data.batch_size * accum * env.world_size / max(step_time, 1e-9),
                            "train/eta_s": eta,
                            "train/epoch": pos.epoch + pos.batch / batches_per_epoch,
                            "data/skipped": float(loader.skipped),
                            "mem/peak_mb": _peak_memory_mb(self.device),
                        })
                        self.log(f"epoch {pos.epoch} step {pos.opt_step}/{total_steps} loss {step_loss:.4f} lr {metrics['train/lr']:.3g} "
                                 f"{metrics['train/images_per_s']:.1f} img/s eta {eta / 60:.1f} min")
                    self.sink.log_metrics(metrics, pos.opt_step)
                step_start = time.monotonic()

                if self._checkpoint_due(pos, last_save_time):
                    self._save(task, optimizer, scaler, pos)
                    last_save_time = time.monotonic()
                if self._stop_requested():
                    self._save(task, optimizer, scaler, pos)
                    raise Preempted(f"stopped at step {pos.opt_step} on request; checkpoint {self.last_checkpoint}")

            epoch_finished = pos.batch >= batches_per_epoch
            epoch_stats = all_reduce_sum(torch.tensor([float(loader.skipped)]))
            if epoch_finished:
                epoch_metrics = {
                    "epoch": float(pos.epoch + 1),
                    "epoch/loss": float(epoch_loss[0] / max(epoch_loss[1], 1)),
                    "epoch/time_s": time.monotonic() - epoch_start,
                    "epoch/skipped_samples": float(epoch_stats[0]),
                    "mem/peak_mb": _peak_memory_mb(self.device),
                }
                extra, pictures = task.end_of_epoch(pos.epoch, self.out_dir)
                epoch_metrics.update(extra)
                elapsed = time.monotonic() - run_start
                epoch_metrics["train/eta_s"] = elapsed / max(pos.opt_step - start_step, 1) * (total_steps - pos.opt_step)
                pos.epoch += 1
                pos.batch = 0
                summary.update(epoch_metrics)
                if env.is_main:
                    self.sink.log_metrics(epoch_metrics, pos.opt_step)
                    for picture in pictures:
                        self.sink.log_artifact(picture, "reconstructions")
                    self.log("end of epoch " + ", ".join(f"{k} {v:.4g}" for k, v in epoch_metrics.items()))
                keep = bool(self.cfg.checkpoint.keep_every_epochs) and pos.epoch % self.cfg.checkpoint.keep_every_epochs == 0
                self._save(task, optimizer, scaler, pos, milestone=keep)
                last_save_time = time.monotonic()
            else:
                # max_steps reached mid-epoch: keep the position exactly.
                self._save(task, optimizer, scaler, pos)
        return summary

    def _checkpoint_due(self, pos: Position, last_save_time: float) -> bool:
        c = self.cfg.checkpoint
        due = bool(c.every_steps) and pos.opt_step % c.every_steps == 0
        if c.every_minutes:
            # Clocks differ across ranks: rank 0 decides, everyone follows.
            due = broadcast_object(due or (time.monotonic() - last_save_time) / 60 >= c.every_minutes)
        return due

    def _stop_requested(self) -> bool:
        return bool(all_reduce_sum(torch.tensor([1.0 if self.stop.requested else 0.0]))[0] > 0)

    def _describe_latest(self) -> str:
        latest = self.checkpoints.latest()
        return latest.path if latest else "none (no checkpoint was written yet)"

    def _export_final(self, task) -> None:
        """The final encoder: ours (weights_only) and a timm-loadable export."""
        if self.cfg.task != "pretrain":
            return
        import fsspec

        from ..weights import export_timm_encoder, save_model

        fs, path = fsspec.core.url_to_fs(f"{self.out_dir}/final")
        fs.makedirs(path, exist_ok=True)
        save_model(task.model, f"{self.out_dir}/final/mae.pt")

        with fsspec.open(f"{self.out_dir}/final/encoder_timm.pt", "wb") as f:
            torch.save(export_timm_encoder(task.model), f)
        self.sink.log_artifact(f"{self.out_dir}/final/encoder_timm.pt", "encoder")


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
