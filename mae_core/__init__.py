"""MAE core: model, masking, data, training engines. Knows nothing of Ray, SLURM or MLflow.

The public names are resolved lazily (PEP 562), so that importing a light submodule such as
`mae_core.structured` does not pay for torch.
"""

from __future__ import annotations

from ._lazy import lazy_exports

__version__ = "0.1.0"
_EXPORTS = {name: ".models" for name in ("MAEConfig", "MaskedAutoencoderViT", "build_model", "list_models", "model_config")}
__all__ = [*_EXPORTS, "__version__"]


__getattr__, _ = lazy_exports(__name__, _EXPORTS)


def __dir__():
    return sorted(__all__)
