"""PaSST: the Patchout faSt Spectrogram Transformer teacher (Koutini et al., 2021).

Reference: kkoutini/PaSST `models/passt.py` (the `hear21passt` package holds the same code); facts
in `../shared/reference/models_and_frontends.md` §3. Parameter names mirror the PyTorch module so
`jax_asc.models.convert.passt_params` loads the official checkpoints.

* Patch embedding: Conv2d(1, D, 16×16, stride 10 for PaSST-S) → a (F', T') grid of tokens.
* Separate positional embeddings: `freq_new_pos_embed` (one per frequency row) and
  `time_new_pos_embed` (one per time column, cut to the input's length).
* Structured patchout (training only): keep a random sorted subset of T' − s_patchout_t time
  columns and F' − s_patchout_f frequency rows, one draw per batch (rng stream "patchout").
* cls and distillation tokens (+ `new_pos_embed`), pre-LN blocks (LayerNorm eps 1e-6, qkv bias,
  exact GELU), final LayerNorm; logits = head((x[:, 0] + x[:, 1]) / 2), head = LayerNorm(eps
  1e-5) → Linear.

Input (B, n_mels, frames) log-mels of the PaSST frontend (`audio.frontends.PASST`). Output logits
(B, n_classes), or with `return_features=True` a dict with `tokens` (B, N, D) after the final
norm, the pooled `embedding` (B, D) (the mean of both tokens, what the head sees) and `logits`.
"""
from __future__ import annotations

from typing import Any, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

# The reference init (`_init_vit_weights` without jax_impl): Linear weights and the token and
# positional embeddings trunc-normal(0.02), zero biases, a zero head; the patch convolution keeps
# PyTorch's default, uniform(±1/√fan_in).
trunc_normal_02 = nn.initializers.truncated_normal(0.02)
torch_conv_default = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


class Attention(nn.Module):
  dim: int
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, tokens, _ = x.shape
    head_dim = self.dim // self.num_heads
    qkv = nn.Dense(3 * self.dim, kernel_init=trunc_normal_02, dtype=self.dtype, name="qkv")(x)
    qkv = qkv.reshape(batch, tokens, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]   # (B, N, H, d)
    logits = jnp.einsum("bnhd,bmhd->bhnm", q, k) * head_dim ** -0.5
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    y = jnp.einsum("bhnm,bmhd->bnhd", weights, v).reshape(batch, tokens, self.dim)
    return nn.Dense(self.dim, kernel_init=trunc_normal_02, dtype=self.dtype, name="proj")(y)


class Block(nn.Module):
  """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""
  dim: int
  num_heads: int
  mlp_ratio: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    norm = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=name)
    x = x + Attention(self.dim, self.num_heads, self.dtype, name="attn")(norm("norm1")(x))
    y = norm("norm2")(x)
    y = nn.Dense(int(self.dim * self.mlp_ratio), kernel_init=trunc_normal_02, dtype=self.dtype,
                 name="fc1")(y)
    y = nn.gelu(y, approximate=False)
    y = nn.Dense(self.dim, kernel_init=trunc_normal_02, dtype=self.dtype, name="fc2")(y)
    return x + y


class PaSST(nn.Module):
  """PaSST with distillation token; defaults are PaSST-S (≈ 86 M parameters, 527 classes).

  Attributes:
    input_size: (mel bins, frames) the positional embeddings are made for (a shorter input uses
      the first time columns; a longer one is an error).
    patch_size / stride: patch embedding kernel and stride (PaSST-S: 16 and 10).
    s_patchout_t / s_patchout_f: time columns / frequency rows dropped in training.
  """
  n_classes: int = 527
  input_size: Tuple[int, int] = (128, 998)
  patch_size: int = 16
  stride: int = 10
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  s_patchout_t: int = 0
  s_patchout_f: int = 0
  dtype: Any = jnp.float32

  @property
  def grid_size(self) -> Tuple[int, int]:
    """Positional-embedding grid: input_size // stride, as the reference's PatchEmbed."""
    f, t = self.input_size
    return f // self.stride, t // self.stride

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    if x.ndim == 3:
      x = x[..., None]
    x = x.astype(self.dtype)
    grid_f, grid_t = self.grid_size
    dim = self.embed_dim
    x = nn.Conv(dim, (self.patch_size, self.patch_size), (self.stride, self.stride),
                padding="VALID", kernel_init=torch_conv_default, dtype=self.dtype,
                name="patch_embed")(x)
    batch, f, t, _ = x.shape
    if f != grid_f or t > grid_t:
      raise ValueError(f"input {x.shape[1:3]} patches to a {f}×{t} grid; the model's positional "
                       f"embeddings are for {grid_f}×{grid_t} (input_size={self.input_size})")
    time_pos = self.param("time_new_pos_embed", trunc_normal_02, (1, 1, grid_t, dim))
    freq_pos = self.param("freq_new_pos_embed", trunc_normal_02, (1, grid_f, 1, dim))
    x = x + time_pos[:, :, :t].astype(self.dtype) + freq_pos.astype(self.dtype)
    if train and (self.s_patchout_t or self.s_patchout_f):
      key_t, key_f = jax.random.split(self.make_rng("patchout"))
      if self.s_patchout_t:
        keep = jnp.sort(jax.random.permutation(key_t, t)[:t - self.s_patchout_t])
        x = jnp.take(x, keep, axis=2)
      if self.s_patchout_f:
        keep = jnp.sort(jax.random.permutation(key_f, f)[:f - self.s_patchout_f])
        x = jnp.take(x, keep, axis=1)
    x = x.reshape(batch, -1, dim)   # frequency-major token order, as torch's flatten(2)
    cls = self.param("cls_token", trunc_normal_02, (1, 1, dim))
    dist = self.param("dist_token", trunc_normal_02, (1, 1, dim))
    token_pos = self.param("new_pos_embed", trunc_normal_02, (1, 2, dim))
    special = jnp.concatenate([cls + token_pos[:, :1], dist + token_pos[:, 1:]], axis=1)
    x = jnp.concatenate([jnp.broadcast_to(special.astype(self.dtype), (batch, 2, dim)), x], axis=1)
    for i in range(self.depth):
      x = Block(dim, self.num_heads, self.mlp_ratio, self.dtype, name=f"blocks_{i}")(x)
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(x)
    embedding = ((x[:, 0] + x[:, 1]) / 2).astype(jnp.float32)
    y = nn.LayerNorm(epsilon=1e-5, name="head_norm")(embedding)
    logits = nn.Dense(self.n_classes, kernel_init=nn.initializers.zeros, name="head")(y)
    if not return_features:
      return logits
    return {"tokens": x, "embedding": embedding, "logits": logits}
