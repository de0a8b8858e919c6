"""The release's MAE pipeline re-derived functionally from REFERENCE.md's text (not from our
modules): the official op order, from an official-format state dict. tests/test_model.py checks
the model against it; `python -m bench.model` times a training step of it as "official".

Torch only, so that a benchmark can import it without the test dependencies.
"""

import torch
import torch.nn.functional as F

from mae_core.models.config import MAEConfig


def _layer_norm(x, sd, prefix):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + "weight"], sd[prefix + "bias"], eps=1e-6)


def _linear(x, sd, prefix):
    return F.linear(x, sd[prefix + "weight"], sd[prefix + "bias"])


def _block(x, sd, prefix, heads):
    n, t, d = x.shape
    h = _layer_norm(x, sd, prefix + "norm1.")
    q, k, v = _linear(h, sd, prefix + "attn.qkv.").reshape(n, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    attn = ((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5).softmax(-1)
    x = x + _linear((attn @ v).transpose(1, 2).reshape(n, t, d), sd, prefix + "attn.proj.")
    h = _layer_norm(x, sd, prefix + "norm2.")
    return x + _linear(F.gelu(_linear(h, sd, prefix + "mlp.fc1.")), sd, prefix + "mlp.fc2.")


def reference_mae_loss(sd, c: MAEConfig, imgs, noise, ratio):
    """REFERENCE.md's pipeline, functionally, from an official-format state dict."""
    p = c.patch_size
    x = F.conv2d(imgs, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p)
    x = x.flatten(2).transpose(1, 2) + sd["pos_embed"][:, 1:]
    n, length, d = x.shape
    keep = int(length * (1 - ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    x = torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
    x = torch.cat([(sd["cls_token"] + sd["pos_embed"][:, :1]).expand(n, -1, -1), x], dim=1)
    for i in range(c.depth):
        x = _block(x, sd, f"blocks.{i}.", c.num_heads)
    x = _linear(_layer_norm(x, sd, "norm."), sd, "decoder_embed.")
    dd = x.shape[-1]
    rest = torch.cat([x[:, 1:], sd["mask_token"].repeat(n, length + 1 - x.shape[1], 1)], dim=1)
    x = torch.cat([x[:, :1], torch.gather(rest, 1, ids_restore[..., None].expand(-1, -1, dd))], dim=1)
    x = x + sd["decoder_pos_embed"]
    for i in range(c.decoder_depth):
        x = _block(x, sd, f"decoder_blocks.{i}.", c.decoder_num_heads)
    pred = _linear(_layer_norm(x, sd, "decoder_norm."), sd, "decoder_pred.")[:, 1:]
    gh, gw = imgs.shape[2] // p, imgs.shape[3] // p
    target = imgs.reshape(n, 3, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1).reshape(n, gh * gw, p * p * 3)
    if c.norm_pix_loss:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    mask = torch.ones(n, length)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    loss = ((pred - target) ** 2).mean(-1)
    return (loss * mask).sum() / mask.sum(), pred, mask
