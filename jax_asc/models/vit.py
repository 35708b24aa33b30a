"""ViT: a plain Vision Transformer over log-mel patches, trained from scratch (report 002's ViT).

Report 002 names a ViT teacher without specifying it. Our choice is the original ViT
(Dosovitskiy et al., 2021) on spectrograms, which is PaSST without what PaSST adds:
* non-overlapping `patch_size` × `patch_size` patches (PaSST: overlapping, stride 10);
* one learned positional embedding per grid position (PaSST: separate frequency and time ones);
* a cls token only (PaSST: cls + distillation tokens), no patchout;
* the same pre-LN blocks as PaSST (`passt.Block`: LayerNorm eps 1e-6, exact GELU), final
  LayerNorm, logits = Linear(cls).
Sizes follow ViT's naming: "tiny" is width 192, depth 12, 3 heads (≈ 5.4 M parameters at 10
classes), inside report 002's range of teacher sizes (128 K … 10 M).

Input (B, n_mels, frames) log-mels (or (B, n_mels, frames, 1)). `input_size` fixes the
positional grid; a shorter input uses its first time columns. Output logits (B, n_classes), or
with `return_features=True` a dict with `tokens` (B, 1 + N, D) after the final norm, the cls
`embedding` (B, D) and `logits`.
"""
from __future__ import annotations

from typing import Any, Tuple

import flax.linen as nn
import jax.numpy as jnp

from jax_asc.models.passt import Block, torch_conv_default, trunc_normal_02


class ViT(nn.Module):
  """Plain ViT classifier; see the module docstring."""
  n_classes: int = 10
  input_size: Tuple[int, int] = (128, 100)
  patch_size: int = 16
  embed_dim: int = 192
  depth: int = 12
  num_heads: int = 3
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  @property
  def grid_size(self) -> Tuple[int, int]:
    f, t = self.input_size
    return f // self.patch_size, t // self.patch_size

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    if x.ndim == 3:
      x = x[..., None]
    x = x.astype(self.dtype)
    grid_f, grid_t = self.grid_size
    if grid_f == 0 or grid_t == 0:
      raise ValueError(f"ViT: input_size {tuple(self.input_size)} holds no "
                       f"{self.patch_size}×{self.patch_size} patch")
    dim = self.embed_dim
    p = self.patch_size
    x = nn.Conv(dim, (p, p), (p, p), padding="VALID", kernel_init=torch_conv_default,
                dtype=self.dtype, name="patch_embed")(x)
    batch, f, t, _ = x.shape
    if f != grid_f or t > grid_t or t == 0:
      raise ValueError(f"ViT: input {x.shape[1:3]} patches to a {f}×{t} grid; the positional "
                       f"embeddings are for {grid_f}×{grid_t} (input_size={self.input_size})")
    pos = self.param("pos_embed", trunc_normal_02, (1, grid_f, grid_t, dim))
    x = (x + pos[:, :, :t].astype(self.dtype)).reshape(batch, f * t, dim)
    cls = self.param("cls_token", trunc_normal_02, (1, 1, dim))
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, dim)), x], axis=1)
    for i in range(self.depth):
      x = Block(dim, self.num_heads, self.mlp_ratio, self.dtype, name=f"blocks_{i}")(x)
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(x)
    embedding = x[:, 0].astype(jnp.float32)
    logits = nn.Dense(self.n_classes, kernel_init=nn.initializers.zeros, name="head")(embedding)
    if not return_features:
      return logits
    return {"tokens": x, "embedding": embedding, "logits": logits}


def expected_params(n_classes=10, input_size=(128, 100), patch_size=16, embed_dim=192, depth=12,
                    mlp_ratio=4.0) -> int:
  """Parameter count by formula, for tests and for choosing sizes."""
  d, hidden = embed_dim, int(embed_dim * mlp_ratio)
  grid = (input_size[0] // patch_size) * (input_size[1] // patch_size)
  block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d)
  embedding = (patch_size ** 2 * d + d) + grid * d + d   # patches, positions, cls token
  return embedding + depth * block + 2 * d + d * n_classes + n_classes
