"""Networks (torch) and their configs (plain data). Names resolve lazily (PEP 562), so that
`mae_core.models.config` can be read without importing torch."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ClassifierConfig": ".classifier", "VisionTransformerClassifier": ".classifier", "classifier_from_mae": ".classifier",
    "MaskedAutoencoderViT": ".mae",
    "MAEConfig": ".config", "ModelConfig": ".config", "list_models": ".config", "model_config": ".config",
    "build_model": ".registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
