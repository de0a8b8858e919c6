"""What differs between pretraining, fine-tuning and linear probing: the model, its parameter
groups, the loss of one batch and what is measured at the end of an epoch. The loop that
drives them (optimisation, checkpoints, metrics, distribution) is shared, in `loop.py`."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import IGNORE_LABEL
from ..masking import make_noise
from .config import RunConfig
from .distributed import DistEnv


class Task:
    loader_mode: str = "pretrain"

    def __init__(self, cfg: RunConfig, env: DistEnv, device: torch.device):
        self.cfg, self.env, self.device = cfg, env, device
        self.model: nn.Module = self.build_model().to(device)
        self.state: dict = {}  # task-specific resumable values (e.g. best accuracy)

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def param_groups(self) -> list[dict]:
        raise NotImplementedError

    def build_optimizer(self, lr: float) -> torch.optim.Optimizer:
        o = self.cfg.optim
        groups = self.param_groups()
        if o.name == "lars":
            from .lars import LARS

            return LARS(groups, lr=lr, weight_decay=o.weight_decay, momentum=o.momentum)
        fused = o.fused and self.device.type == "cuda"
        return torch.optim.AdamW(groups, lr=lr, betas=o.betas, fused=fused or None)

    def loss(self, step_model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def rng_generators(self) -> dict[str, torch.Generator]:
        return {}

    def start_of_training(self) -> dict[str, float]:
        """Metrics of the model before its first step (a fresh run, not a resume); every rank."""
        return {}

    def end_of_epoch(self, epoch: int, out_dir: str) -> tuple[dict[str, float], list[str]]:
        """Metrics and image files to log after `epoch` (0-based); called on every rank."""
        return {}, []

    def export_config(self) -> dict:
        """The model's constructor arguments, stored in checkpoints."""
        return self.cfg.model_config().to_dict()


class PretrainTask(Task):
    loader_mode = "pretrain"

    def build_model(self) -> nn.Module:
        from ..models.mae import MaskedAutoencoderViT

        model = MaskedAutoencoderViT(self.cfg.model_config())
        if self.cfg.checkpoint.init_from:
            from ..weights import load_pretrained

            report = load_pretrained(model, self.cfg.checkpoint.init_from)
            if self.env.is_main:
                print(f"[maectl] initialised from {self.cfg.checkpoint.init_from}: {report}", flush=True)
        # Masking noise has its own generator so that resume restores it exactly, per rank.
        self.mask_generator = torch.Generator().manual_seed(self.cfg.train.seed * 1000 + self.env.rank + 1)
        return model

    def rng_generators(self) -> dict[str, torch.Generator]:
        return {"mask": self.mask_generator}

    def param_groups(self) -> list[dict]:
        from ..optim import param_groups_weight_decay

        return param_groups_weight_decay(self.model, self.cfg.optim.weight_decay, decay_tokens=self.cfg.optim.decay_tokens)

    def loss(self, step_model, images, labels):
        c = self.model.config
        grid = self.model.patch_embed.grid(images.shape[-2], images.shape[-1])
        noise = make_noise(c.mask_strategy, images.shape[0], grid, c.mask_ratio, generator=self.mask_generator)
        # full_pred=False: the decoder head runs on the masked patches only, all the loss reads.
        loss, _, _ = step_model(images, noise=noise.to(self.device), full_pred=False)
        return loss

    def _fit_pca_target(self) -> None:
        """Target 'pca': the basis from the first training batches, before step 0, with the
        patch moments summed over ranks so that every rank gets the same basis."""
        from ..data import build_loader
        from ..patches import patchify
        from ..targets import PCA_FIT_IMAGES, patch_moments, pca_from_moments
        from .distributed import all_reduce_sum

        c = self.model.config
        if c.reconstruction_target != "pca" or bool(self.model.decoder_pca_basis.any()):
            return  # not PCA, or the checkpoint it starts from carries the basis
        loader = build_loader(self.cfg.data, split="train", mode=self.loader_mode, rank=self.env.rank,
                              world_size=self.env.world_size, epoch=0, seed=self.cfg.train.seed)
        moments, seen = None, 0
        for images, _ in loader:
            batch = patch_moments(patchify(images.float(), c.patch_size))
            moments = batch if moments is None else tuple(a + b for a, b in zip(moments, batch))
            seen += images.shape[0] * self.env.world_size
            if seen >= PCA_FIT_IMAGES:
                break
        moments = [all_reduce_sum(m.to(self.device)).cpu() for m in moments]
        self.model.set_pca_basis(*pca_from_moments(*moments, c.pca_components)[:2])
        if self.env.is_main:
            print(f"[maectl] target pca: {c.pca_components} components from {int(moments[0])} patches", flush=True)

    def start_of_training(self):
        self._fit_pca_target()
        # The same architecture, same seed, before any step: what pretraining has to beat. Kept
        # in the task state, so a resumed run still reports it beside its final figures.
        if not (self.cfg.monitor.knn_every_epochs and self.cfg.monitor.baseline_at_init):
            return {}
        baseline = {f"{name}_random_init": value for name, value in self._monitor().items()}
        self.state["random_init"] = baseline
        return baseline

    def end_of_epoch(self, epoch, out_dir):
        m = self.cfg.monitor
        metrics, images = {}, []
        last = epoch + 1 == self.cfg.train.epochs
        if m.knn_every_epochs and ((epoch + 1) % m.knn_every_epochs == 0 or last):
            metrics.update(self._monitor())
            baseline = self.state.get("random_init", {})
            for name in ("knn/top1", "probe/top1"):
                if name in metrics and f"{name}_random_init" in baseline:
                    metrics[f"{name}_gain"] = metrics[name] - baseline[f"{name}_random_init"]
        if m.recon_every_epochs and ((epoch + 1) % m.recon_every_epochs == 0 or last) and self.env.is_main:
            images.append(self._reconstructions(epoch, out_dir))
        return metrics, images

    def _eval_loader(self, split: str, max_samples: int | None = None):
        from ..data import build_loader

        loader = build_loader(
            self.cfg.data, split=split, mode="eval", rank=0, world_size=1, epoch=0, seed=self.cfg.train.seed
        )
        for i, batch in enumerate(loader):
            if max_samples is not None and i * self.cfg.data.batch_size >= max_samples:
                break
            yield batch

    @torch.no_grad()
    def _features(self, split: str, max_samples: int | None = None):
        feats, labels = [], []
        was_training = self.model.training
        self.model.eval()
        for images, y in self._eval_loader(split, max_samples):
            keep = y != IGNORE_LABEL  # the loader pads eval batches with ignored labels
            feats.append(self.model.extract_features(images[keep].to(self.device), pool=self.cfg.monitor.knn_pool).float().cpu())
            labels.append(y[keep])
        self.model.train(was_training)
        return torch.cat(feats), torch.cat(labels)

    def _monitor(self) -> dict[str, float]:
        """kNN top-1 (and the feature probe's) of the encoder as it is now, on held-out val images.

        Rank 0 evaluates on the whole (bounded) split while the others wait: a monitor, not a
        benchmark. The result is broadcast, so every rank returns the same metrics.
        """
        from .distributed import barrier, broadcast_object

        metrics = None
        if self.env.is_main:
            from .knn import knn_top1, linear_probe_top1

            m = self.cfg.monitor
            train_x, train_y = self._features("train", m.knn_max_train_samples)
            val_x, val_y = self._features("val")
            metrics = {"knn/top1": knn_top1(train_x, train_y, val_x, val_y, k=m.knn_k, temperature=m.knn_temperature)}
            if m.feature_probe:
                metrics["probe/top1"] = linear_probe_top1(train_x, train_y, val_x, val_y)
        metrics = broadcast_object(metrics)
        barrier()
        return metrics

    @torch.no_grad()
    def _reconstructions(self, epoch: int, out_dir: str) -> str:
        import fsspec

        from ..visualize import reconstruction_grid

        images, _ = next(iter(self._eval_loader("val")))
        images = images[: self.cfg.monitor.recon_images].to(self.device)
        noise_gen = torch.Generator().manual_seed(1234)  # same masks every epoch: comparable pictures
        grid = self.model.patch_embed.grid(images.shape[-2], images.shape[-1])
        c = self.model.config
        noise = make_noise(c.mask_strategy, images.shape[0], grid, c.mask_ratio, generator=noise_gen).to(self.device)
        was_training = self.model.training
        self.model.eval()
        picture = reconstruction_grid(self.model, images, mean=self.cfg.data.mean, std=self.cfg.data.std, noise=noise)
        self.model.train(was_training)
        url = f"{out_dir.rstrip('/')}/images/reconstruction-epoch{epoch + 1:04d}.png"
        fs, path = fsspec.core.url_to_fs(url)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fsspec.open(url, "wb") as f:
            picture.save(f, format="PNG")
        return url


class ClassifierTask(Task):
    """Shared by fine-tuning and linear probing: top-1/top-5 on the val split, best tracking."""

    def end_of_epoch(self, epoch, out_dir):
        from .distributed import barrier, broadcast_object

        every = self.cfg.finetune.eval_every_epochs
        if (epoch + 1) % every and epoch + 1 != self.cfg.train.epochs:
            return {}, []
        result = self.evaluate() if self.env.is_main else None
        result = broadcast_object(result)
        barrier()
        best = max(self.state.get("best_top1", 0.0), result["eval/top1"])
        self.state["best_top1"] = best
        return {**result, "eval/best_top1": best}, []

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        from ..data import build_loader

        loader = build_loader(self.cfg.data, split="val", mode="eval", rank=0, world_size=1, epoch=0, seed=self.cfg.train.seed)
        was_training = self.model.training
        self.model.eval()
        total = correct1 = correct5 = 0
        loss_sum = 0.0
        for images, labels in loader:
            keep = labels != IGNORE_LABEL  # padding of the last batch
            images, labels = images[keep], labels[keep]
            if labels.numel() == 0:
                continue
            logits = self.model(images.to(self.device)).float().cpu()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct1 += int((top[:, 0] == labels).sum())
            correct5 += int((top == labels[:, None]).any(dim=1).sum())
            total += labels.shape[0]
        self.model.train(was_training)
        if total == 0:
            raise RuntimeError("the val split yielded no samples to evaluate")
        return {"eval/top1": 100.0 * correct1 / total, "eval/top5": 100.0 * correct5 / total, "eval/loss": loss_sum / total}

    def _load_pretrained(self, model: nn.Module) -> None:
        if not self.cfg.checkpoint.init_from:
            return
        from ..weights import load_pretrained

        report = load_pretrained(model, self.cfg.checkpoint.init_from)
        if self.env.is_main:
            print(f"[maectl] initialised from {self.cfg.checkpoint.init_from}: {report}", flush=True)


class FinetuneTask(ClassifierTask):
    loader_mode = "finetune"

    def build_model(self):
        from ..models.classifier import classifier_from_mae

        f = self.cfg.finetune
        # Built for the data's resolution (448 for the ViT-H recipe), so that load_pretrained
        # resamples the 224 px pos_embed once, at load, rather than every forward doing it.
        model = classifier_from_mae(self.cfg.model_config(), num_classes=f.num_classes, global_pool=f.global_pool,
                                    drop_path=f.drop_path, img_size=self.cfg.data.img_size)
        self._load_pretrained(model)
        self.mix = self._mixing(f)
        return model

    def _mixing(self, f):
        """timm's Mixup/CutMix as the release uses them: per batch, mixup with probability 1 -
        switch_prob else cutmix, lam corrected for the clipped box, label smoothing in the targets."""
        if f.mixup <= 0 and f.cutmix <= 0:
            return None
        if self.cfg.data.batch_size % 2:
            from ..structured import ConfigError

            raise ConfigError("data.batch_size", f"must be even with mixup/cutmix (timm mixes a batch with its reverse), "
                                                 f"got {self.cfg.data.batch_size}")
        from timm.data import Mixup

        return Mixup(mixup_alpha=f.mixup, cutmix_alpha=f.cutmix, prob=f.mixup_prob, switch_prob=f.mixup_switch_prob,
                     mode=f.mixup_mode, label_smoothing=f.label_smoothing, num_classes=f.num_classes)

    def param_groups(self):
        from ..optim import param_groups_lrd

        o = self.cfg.optim
        skip = getattr(self.model, "no_weight_decay", lambda: set())()
        return param_groups_lrd(self.model, o.weight_decay, o.layer_decay or 1.0, skip)

    def loss(self, step_model, images, labels):
        smoothing = self.cfg.finetune.label_smoothing
        num_classes = self.cfg.finetune.num_classes
        if self.mix is not None:
            images, targets = self.mix(images, labels)  # soft targets, smoothing included (timm)
        else:
            targets = F.one_hot(labels, num_classes).float() * (1 - smoothing) + smoothing / num_classes
        logits = step_model(images)
        return torch.sum(-targets.to(logits.device) * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class LinearProbeTask(ClassifierTask):
    loader_mode = "linprobe"

    def build_model(self):
        from ..models.classifier import classifier_from_mae

        model = classifier_from_mae(
            # The paper probes the cls token (base/linprobe.yaml: global_pool token); "avg" probes
            # the mean of the patch tokens through a fresh fc_norm, as timm's avg pooling.
            self.cfg.model_config(), num_classes=self.cfg.finetune.num_classes, global_pool=self.cfg.finetune.global_pool,
            drop_path=0.0,
            img_size=self.cfg.data.img_size,
        )
        self._load_pretrained(model)
        head = model.head
        nn.init.trunc_normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)
        # BatchNorm without affine before the linear head: a re-scaling that LARS needs.
        model.head = nn.Sequential(nn.BatchNorm1d(head.in_features, affine=False, eps=1e-6), head)
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("head.")
        return model

    def param_groups(self):
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "weight_decay": self.cfg.optim.weight_decay}]

    def loss(self, step_model, images, labels):
        return F.cross_entropy(step_model(images).float(), labels.to(self.device))


TASKS = {"pretrain": PretrainTask, "finetune": FinetuneTask, "linprobe": LinearProbeTask}
