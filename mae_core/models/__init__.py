from .mae import MAEConfig, MaskedAutoencoderViT
from .registry import build_model, list_models, model_config

__all__ = ["MAEConfig", "MaskedAutoencoderViT", "build_model", "list_models", "model_config"]
