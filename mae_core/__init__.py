"""MAE core: model, masking, data, training engines. Knows nothing of Ray, SLURM or MLflow."""

from .models import MAEConfig, MaskedAutoencoderViT, build_model, list_models, model_config

__version__ = "0.1.0"
__all__ = ["MAEConfig", "MaskedAutoencoderViT", "build_model", "list_models", "model_config", "__version__"]
