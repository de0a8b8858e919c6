"""Networks (torch) and their configs (plain data). Names resolve lazily (PEP 562), so that
`mae_core.models.config` can be read without importing torch."""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "ClassifierConfig": ".classifier", "VisionTransformerClassifier": ".classifier", "classifier_from_mae": ".classifier",
    "MaskedAutoencoderViT": ".mae",
    "MAEConfig": ".config", "ModelConfig": ".config", "list_models": ".config", "model_config": ".config",
    "build_model": ".registry",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
