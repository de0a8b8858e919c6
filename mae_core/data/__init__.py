"""The data path: ImageNet-style folders -> WebDataset shards + manifests -> augmented batches.

    from mae_core.data import DataConfig, build_loader, read_manifest
    loader = build_loader(cfg, split="train", mode="pretrain", rank=r, world_size=w, epoch=e, seed=s)

Importing this package also teaches webdataset's `gopen` the `s3://` scheme (via fsspec/s3fs).
See docs/data.md.
"""

from .config import DataConfig
from .errors import DataError, ManifestError, ShardReadError
from .io import register_webdataset_s3
from .loader import IGNORE_LABEL, ShardLoader, build_loader
from .manifest import Manifest, ShardInfo, read_manifest
from .transforms import MODES

register_webdataset_s3()

__all__ = [
    "DataConfig", "DataError", "IGNORE_LABEL", "MODES", "Manifest", "ManifestError", "ShardInfo", "ShardLoader",
    "ShardReadError", "build_loader", "read_manifest",
]
