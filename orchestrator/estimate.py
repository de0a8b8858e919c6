"""Compute estimates for `maectl show`: FLOPs per image and GPU-hours for a whole run.

Counted: the matrix multiplies of every transformer block (qkv, attention scores, attention x
values, output projection, MLP), the patch embedding, the decoder's input projection and its
pixel head. Not counted: norms, softmax, GELU, the loss (a few percent at most). One
multiply-add = 2 FLOPs; a training step costs 3x the forward pass (backward ~ 2x forward).
"""

from __future__ import annotations

from dataclasses import dataclass

# The throughput assumed when the user gives none: sustained model FLOP/s per GPU in bf16,
# ~30% of an A100's 312 TFLOP/s peak (or ~10% of an H100's dense peak) — typical of
# ViT pretraining with data loading included. Pass --tflops to use a measured figure.
DEFAULT_TFLOPS_PER_GPU = 100.0
TRAIN_FLOPS_PER_FORWARD = 3.0
IMAGENET_TRAIN_IMAGES = 1_281_167


def block_flops(tokens: int, dim: int, mlp_ratio: float) -> float:
    """Forward FLOPs of one pre-norm transformer block over `tokens` tokens of width `dim`."""
    projections = tokens * dim * dim * (3 + 1)  # qkv and the output projection
    mlp = tokens * dim * int(dim * mlp_ratio) * 2
    attention = 2 * tokens * tokens * dim  # q @ k^T and attn @ v
    return 2.0 * (projections + mlp + attention)


@dataclass(frozen=True)
class FlopsPerImage:
    """Forward FLOPs for one image, by part."""

    patch_embed: float
    encoder: float
    decoder: float
    encoder_tokens: int  # including the cls token
    decoder_tokens: int

    @property
    def forward(self) -> float:
        return self.patch_embed + self.encoder + self.decoder

    @property
    def train(self) -> float:
        return TRAIN_FLOPS_PER_FORWARD * self.forward


def pretrain_flops(c, *, mask_token_in_encoder: bool | None = None) -> FlopsPerImage:
    """FLOPs of one MAE pretraining forward pass for `c` (an MAEConfig)."""
    patches = (c.img_size // c.patch_size) ** 2
    in_encoder = c.mask_token_in_encoder if mask_token_in_encoder is None else mask_token_in_encoder
    visible = patches if in_encoder else int(patches * (1 - c.mask_ratio))
    enc_tokens = visible + 1
    patch_dim = c.patch_size * c.patch_size * c.in_chans
    patch_embed = 2.0 * patches * patch_dim * c.embed_dim
    encoder = c.depth * block_flops(enc_tokens, c.embed_dim, c.mlp_ratio)
    dec_tokens = patches + 1
    decoder = (
        2.0 * enc_tokens * c.embed_dim * c.decoder_embed_dim  # decoder_embed on what the encoder returns
        + c.decoder_depth * block_flops(dec_tokens, c.decoder_embed_dim, c.mlp_ratio)
        + 2.0 * dec_tokens * c.decoder_embed_dim * patch_dim  # decoder_pred
    )
    return FlopsPerImage(patch_embed, encoder, decoder, enc_tokens, dec_tokens)


def classifier_flops(c) -> FlopsPerImage:
    """Fine-tuning / linear probing: the encoder on every patch, no decoder."""
    patches = (c.img_size // c.patch_size) ** 2
    patch_dim = c.patch_size * c.patch_size * c.in_chans
    encoder = c.depth * block_flops(patches + 1, c.embed_dim, c.mlp_ratio)
    return FlopsPerImage(2.0 * patches * patch_dim * c.embed_dim, encoder, 0.0, patches + 1, 0)


@dataclass(frozen=True)
class RunEstimate:
    flops: FlopsPerImage
    train_flops_per_image: float  # linear probing backpropagates through the head only
    images: float  # images processed over the whole run
    images_source: str
    tflops_per_gpu: float
    gpus: int

    @property
    def total_flops(self) -> float:
        return self.train_flops_per_image * self.images

    @property
    def gpu_hours(self) -> float:
        return self.total_flops / (self.tflops_per_gpu * 1e12) / 3600

    @property
    def wall_hours(self) -> float | None:
        return self.gpu_hours / self.gpus if self.gpus else None


def estimate_run(run, resources, *, train_images: int | None, tflops_per_gpu: float = DEFAULT_TFLOPS_PER_GPU,
                 images_source: str = "dataset manifest") -> RunEstimate:
    """`run` a RunConfig, `resources` a Resources; `train_images` per epoch (from the dataset
    manifest when readable; None assumes ImageNet-1K)."""
    c = run.model_config()
    if run.task == "pretrain":
        flops = pretrain_flops(c)
        train_per_image = flops.train
    else:
        flops = classifier_flops(c)
        # A frozen encoder (linear probe) needs its forward pass only.
        train_per_image = flops.train if run.task == "finetune" else flops.forward
    if not train_images:
        images_source = "ImageNet-1K train: the dataset manifest is not readable from here"
    per_epoch = train_images or IMAGENET_TRAIN_IMAGES
    images = float(per_epoch) * run.train.epochs
    return RunEstimate(flops, train_per_image, images, images_source, tflops_per_gpu, resources.gpus)
