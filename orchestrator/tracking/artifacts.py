"""MLflow's own kinds of record, made from what the engine leaves behind: the final encoder as an
MLflow model in the Model Registry, and the shards as the run's dataset inputs. Each function
runs on the sender's thread (orchestrator/tracking/sender.py), never in the training loop."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings

import fsspec
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from ..redact import scrub_text
from ._common import warn

ENCODER_ARTIFACT_DIR = "encoder"  # where the engine uploads final/encoder_timm.pt
MODEL_NAME_IN_RUN = "encoder_model"  # the MLflow model's name within its run
# The splits a job reads, and MLflow's word for each use.
DATASET_SPLITS = (("train", "training"), ("val", "evaluation"))


def _local_copy(url: str, folder: str) -> str:
    if "://" not in url or url.startswith("file://"):
        return url.removeprefix("file://")
    copy = os.path.join(folder, url.rstrip("/").rsplit("/", 1)[-1])
    fsspec.core.url_to_fs(url)[0].get(url, copy)
    return copy


def build_encoder(final_dir: str):
    """The pretrained encoder as a module, (N, C, H, W) images -> (N, D) features (the normed cls
    token, what the paper's linear probe reads), from the engine's <output_dir>/final/mae.pt."""
    from mae_core.models.classifier import classifier_from_mae
    from mae_core.weights import export_timm_encoder, load_model

    with tempfile.TemporaryDirectory() as tmp:
        mae = load_model(_local_copy(f"{final_dir.rstrip('/')}/mae.pt", tmp))
    encoder = classifier_from_mae(mae.config, num_classes=0, global_pool="token")
    encoder.load_state_dict(export_timm_encoder(mae, global_pool="token"), strict=True)
    return encoder.eval()


def log_encoder_model(tracking_uri: str, run_id: str, final_dir: str, registered_name: str) -> str:
    """Log the encoder with `mlflow.pytorch.log_model` (input example, signature) and register it
    as a new version of `registered_name`; returns the model's URI (models:/NAME/VERSION)."""
    import mlflow
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(tracking_uri)  # log_model's artifact upload uses the process-wide URI
    encoder = build_encoder(final_dir)
    c = encoder.config
    # A fixed example (not a training image): what the signature describes is the shape and dtype.
    example = np.random.default_rng(0).standard_normal((1, c.in_chans, c.img_size, c.img_size)).astype(np.float32)
    with torch.no_grad():
        features = encoder(torch.from_numpy(example)).numpy()
    info = mlflow.pytorch.log_model(
        encoder, name=MODEL_NAME_IN_RUN, run_id=run_id, input_example=example,
        signature=infer_signature(example, features), registered_model_name=registered_name,
        serialization_format="pickle",  # the module itself (any batch size); pt2 would fix the example's shapes
        # Given, not inferred: inference loads the model in a subprocess (tens of seconds here).
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "maectl"],
        metadata={"maectl.model": "VisionTransformerClassifier(num_classes=0, global_pool='token')",
                  "maectl.config": json.dumps(c.to_dict())},
    )
    version = getattr(info, "registered_model_version", None)
    return f"models:/{registered_name}/{version}" if version else info.model_uri


class ShardDataset(MetaDataset):
    """A WebDataset split as MLflow sees it: a source URL, a digest, and a small profile."""

    def __init__(self, source, name: str, digest: str, profile: dict):
        self._profile = profile
        super().__init__(source=source, name=name, digest=digest)

    @property
    def profile(self):
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": self._profile}  # MLflow's MetaDataset leaves the profile out


def manifest_digest(manifest) -> str:
    """16 hex digits over what defines the data: every shard's name, sample count and sha256."""
    h = hashlib.sha256(manifest.split.encode())
    for shard in manifest.shards:
        h.update(f"\n{shard.name}\t{shard.count}\t{shard.sha256}".encode())
    return h.hexdigest()[:16]


def dataset_inputs(data: dict, splits=DATASET_SPLITS) -> list[DatasetInput]:
    """One MLflow dataset input per split of `data.url` that has a manifest (mae_core/data/manifest.py)."""
    from mae_core.data.errors import ManifestError
    from mae_core.data.manifest import read_manifest

    url = data["url"]
    options = {"endpoint_url": data["s3_endpoint_url"]} if data.get("s3_endpoint_url") else None
    inputs = []
    for split, context in splits:
        try:
            manifest = read_manifest(url, split, storage_options=options)
        except ManifestError:
            continue  # e.g. no val split: nothing to record
        with warnings.catch_warnings():  # a local path "can be interpreted in multiple ways": both are the same class
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(scrub_text(url.split("{")[0].rstrip("/") or url))
        profile = {"split": split, "num_samples": manifest.num_samples, "num_classes": manifest.num_classes,
                   "num_shards": len(manifest.shards)}
        dataset = ShardDataset(source, name=f"{url.rstrip('/').rsplit('/', 1)[-1] or url}:{split}",
                               digest=manifest_digest(manifest), profile=json.dumps(profile))
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    return inputs


def start_system_metrics(tracking_uri: str, run_id: str, *, resume: bool):
    """MLflow's own system-metrics monitor (CPU, memory, disk, network; GPU where nvidia-ml-py
    finds one) on this run, or None where it cannot run (no psutil) or is switched off with
    MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false. Interval: MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL."""
    if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").lower() in ("false", "0", "no"):
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, resume_logging=resume, tracking_uri=tracking_uri)
        monitor.start()
        return monitor
    except Exception as err:  # noqa: BLE001 — e.g. psutil missing: the run goes on without them
        warn(f"no system metrics: {err}")
        return None
