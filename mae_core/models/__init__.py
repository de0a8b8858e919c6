from .classifier import ClassifierConfig, VisionTransformerClassifier, classifier_from_mae
from .mae import MAEConfig, MaskedAutoencoderViT
from .registry import build_model, list_models, model_config

__all__ = [
    "ClassifierConfig",
    "MAEConfig",
    "MaskedAutoencoderViT",
    "VisionTransformerClassifier",
    "build_model",
    "classifier_from_mae",
    "list_models",
    "model_config",
]
