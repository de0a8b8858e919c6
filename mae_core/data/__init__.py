"""The data path: ImageNet-style folders -> WebDataset shards + manifests -> augmented batches.

    from mae_core.data import DataConfig, build_loader, read_manifest
    loader = build_loader(cfg, split="train", mode="pretrain", rank=r, world_size=w, epoch=e, seed=s)

Names resolve lazily (PEP 562), so that `mae_core.data.config` (plain data) imports no torch or
webdataset. The modules that open shards teach webdataset's `gopen` the `s3://` scheme
(`io.register_webdataset_s3`). See docs/data.md.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "DataConfig": ".config",
    "DataError": ".errors", "ManifestError": ".errors", "ShardReadError": ".errors",
    "IGNORE_LABEL": ".loader", "ShardLoader": ".loader", "build_loader": ".loader",
    "Manifest": ".manifest", "ShardInfo": ".manifest", "read_manifest": ".manifest",
    "MODES": ".transforms",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
