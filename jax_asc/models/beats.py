"""BEATs: the audio transformer of Chen et al. (2023), the teacher of report 003 (ContrastASC).

Reference (read, not copied): microsoft/unilm `beats/BEATs.py` and `beats/backbone.py`; facts in
`../shared/reference/models_and_frontends.md` ("BEATs"). Always build from a checkpoint's `cfg`
(`convert.beats_model_fields`): the reference's class defaults are not the released models'.
Our defaults are the released models' cfg (BEATs_iter3+).

  fbank (B, 128, T) normalised Kaldi fbank (`audio.frontends.BEATS`), 100 frames/s
  → Conv2d(1, embed_dim, p×p, stride p, bias=conv_bias) on (time, mel)   (B, T/p, 128/p, E)
  → tokens time-major (index t·(128/p) + f; 10 s: 62 × 8 = 496)         (B, N, E)
  → LayerNorm(E) → Linear(E → D) (`post_extract_proj`, only when E ≠ D)
  → padded tokens zeroed → x + GELU(SamePad(WeightNorm(Conv1d(D, D, k=conv_pos,
     groups=conv_pos_groups, pad conv_pos // 2))))  (the last output dropped for an even k)
  → LayerNorm(D) (post-LN models; pre-LN models normalise after the layers instead)
  → encoder_layers layers, post-LN DeepNorm with α = (2 · encoder_layers)^¼ (1 without deep_norm):
       x = LN(α·x + Attn(x)); x = LN(α·x + fc2(GELU(fc1(x))))
     Attention: q, k, v, out with bias; softmax(q·kᵀ/√d_h + gate ⊙ bias) over valid keys, the
     bias a T5 bidirectional bucketed relative-position table (num_buckets, heads) computed in
     layer 0 and shared by every layer; the gate per query and head from the unscaled query,
     (a, b) = sigmoid(Σ₄ grep_linear(q) viewed as (2, 4)), gate = a·(b·grep_a − 1) + 2.
  → tokens (B, N, D), no final norm (post-LN).

The reference computes softmax((q·kᵀ/(32√d) − rowmax)·32); that equals the plain softmax, which
is what we compute (in float32). GELU is the exact (erf) one.

Padding: `padding_mask` (B, T) bool over fbank frames (True = padding, e.g.
`frontends.frame_padding_mask`); a token is padding when any of its p frames is, so a clip
padded at the end gives the tokens it has alone. The reference reshapes the frame mask as if
tokens were frame-major (unilm #1427); ours follows the time-major token order.

Parameter names mirror the PyTorch module (`patch_embedding`, `layer_norm`, `post_extract_proj`,
`encoder/pos_conv/{weight_g,weight_v,bias}`, `encoder/layers_{i}/self_attn/q_proj`, …) so
`convert.beats_params` maps a checkpoint one to one.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax_asc.models import heads

LN_EPS = 1e-5                  # torch.nn.LayerNorm's default
MASKED = -1e30                 # logits of masked keys (finite: an all-masked row stays finite)
INPUT_LAYOUTS = ("mel_time", "time_mel")
ACTIVATIONS = ("gelu", "relu")
_init = nn.initializers.xavier_uniform()   # random init only; the teacher is converted


def relative_position_buckets(query_length: int, key_length: int, num_buckets: int,
                              max_distance: int) -> np.ndarray:
  """T5 bidirectional buckets (query_length, key_length) int32 of relative position key − query:
  half the buckets per direction, exact up to half of those, then logarithmic up to max_distance
  (beyond: the last bucket). float32 arithmetic as the reference (truncation to int)."""
  relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
  half = num_buckets // 2
  buckets = (relative > 0).astype(np.int64) * half
  distance = np.abs(relative)
  max_exact = half // 2
  with np.errstate(divide="ignore"):
    large = (np.log(distance.astype(np.float32) / np.float32(max_exact))
             / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact))
  large = max_exact + np.where(distance >= max_exact, large, 0.0).astype(np.int64)
  large = np.minimum(large, half - 1)
  return (buckets + np.where(distance < max_exact, distance, large)).astype(np.int32)


def token_padding(frame_padding: jax.Array, patch: int, freq_patches: int) -> jax.Array:
  """(B, T) frame padding (True = padding) → (B, (T // patch) · freq_patches) token padding,
  time-major: a token is padding when any of its `patch` frames is."""
  batch, frames = frame_padding.shape
  rows = frames // patch
  row_padding = frame_padding[:, :rows * patch].reshape(batch, rows, patch).any(axis=-1)
  return jnp.repeat(row_padding, freq_patches, axis=1)


def _activation(name: str):
  if name == "relu":
    return nn.relu
  return lambda x: nn.gelu(x.astype(jnp.float32), approximate=False).astype(x.dtype)


class WeightNormConv1d(nn.Module):
  """Conv1d with weight normalisation over (out, in/groups) per kernel tap (torch's `dim=2`):
  w = g · v / ‖v‖, then SamePad (an even kernel's last output dropped). (B, N, C) → (B, N, C).
  Parameters: `weight_v` (k, C/groups, C), `weight_g` (k,), `bias` (C,)."""
  features: int
  kernel_size: int
  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, c = self.kernel_size, self.features
    if c % self.groups:
      raise ValueError(f"conv_pos_groups={self.groups} does not divide the width {c}")
    std = math.sqrt(4.0 / (k * c))
    v = self.param("weight_v", nn.initializers.normal(std), (k, c // self.groups, c))
    g = self.param("weight_g", lambda key, shape: jnp.sqrt(jnp.sum(v ** 2, axis=(1, 2))), (k,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    weight = g[:, None, None] * v / jnp.sqrt(jnp.sum(v ** 2, axis=(1, 2), keepdims=True))
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), weight.astype(self.dtype), window_strides=(1,),
        padding=((k // 2, k // 2),), dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=self.groups, precision=jax.lax.Precision.HIGHEST)
    y = y + bias.astype(self.dtype)
    return y[:, :x.shape[1]]                              # SamePad


class BEATsAttention(nn.Module):
  """Multi-head self-attention with BEATs' gated relative position bias and a key mask."""
  dim: int
  num_heads: int
  has_table: bool = False           # layer 0 of a relative-position model holds the table
  relative_position_embedding: bool = True
  num_buckets: int = 320
  max_distance: int = 800
  gru_rel_pos: bool = True
  attention_dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, key_valid: jax.Array, position_bias: Optional[jax.Array],
               train: bool = False) -> Tuple[jax.Array, Optional[jax.Array]]:
    """x (B, N, D); key_valid (B, N) bool; position_bias (H, N, N) or None (computed here in
    layer 0) → (B, N, D), the position bias (H, N, N) for the next layers."""
    batch, tokens, _ = x.shape
    heads_, head_dim = self.num_heads, self.dim // self.num_heads
    dense = lambda name: nn.Dense(self.dim, kernel_init=_init, dtype=self.dtype, name=name)
    split = lambda t: t.reshape(batch, tokens, heads_, head_dim)
    q, k, v = split(dense("q_proj")(x)), split(dense("k_proj")(x)), split(dense("v_proj")(x))
    logits = jnp.einsum("bnhd,bmhd->bhnm", q, k).astype(jnp.float32) * head_dim ** -0.5
    if self.relative_position_embedding:
      if position_bias is None:
        if not self.has_table:
          raise ValueError("BEATs: a layer without the relative-position table got no bias")
        table = self.param("relative_attention_bias", nn.initializers.xavier_normal(),
                           (self.num_buckets, heads_))
        buckets = relative_position_buckets(tokens, tokens, self.num_buckets, self.max_distance)
        position_bias = jnp.transpose(table[buckets], (2, 0, 1))            # (H, N, N)
      bias = position_bias[None].astype(jnp.float32)
      if self.gru_rel_pos:
        gates = nn.Dense(8, kernel_init=_init, dtype=self.dtype, name="grep_linear")(q)
        gates = jax.nn.sigmoid(gates.astype(jnp.float32).reshape(batch, tokens, heads_, 2, 4)
                               .sum(-1))                                      # (B, N, H, 2)
        grep_a = self.param("grep_a", nn.initializers.ones, (heads_,))
        gate = gates[..., 0] * (gates[..., 1] * grep_a - 1.0) + 2.0          # (B, N, H)
        bias = jnp.transpose(gate, (0, 2, 1))[..., None] * bias              # (B, H, N, N)
      logits = logits + bias
    logits = jnp.where(key_valid[:, None, None, :], logits, MASKED)
    weights = jax.nn.softmax(logits, axis=-1)
    weights = nn.Dropout(self.attention_dropout)(weights, deterministic=not train)
    y = jnp.einsum("bhnm,bmhd->bnhd", weights.astype(self.dtype), v)
    return dense("out_proj")(y.reshape(batch, tokens, self.dim)), position_bias


class BEATsLayer(nn.Module):
  """One encoder layer, post-LN (DeepNorm α) or pre-LN (`layer_norm_first`)."""
  dim: int
  ffn_dim: int
  num_heads: int
  alpha: float = 1.0
  layer_norm_first: bool = False
  activation_fn: str = "gelu"
  dropout: float = 0.0
  activation_dropout: float = 0.0
  attention: Any = None             # kwargs of BEATsAttention (a frozen tuple of pairs)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, key_valid, position_bias, train: bool = False):
    norm = lambda name: nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name=name)
    attn = BEATsAttention(self.dim, self.num_heads, dtype=self.dtype, name="self_attn",
                          **dict(self.attention or ()))
    drop = lambda rate, y: nn.Dropout(rate)(y, deterministic=not train)
    act = _activation(self.activation_fn)

    def ffn(y):
      y = act(nn.Dense(self.ffn_dim, kernel_init=_init, dtype=self.dtype, name="fc1")(y))
      y = nn.Dense(self.dim, kernel_init=_init, dtype=self.dtype,
                   name="fc2")(drop(self.activation_dropout, y))
      return drop(self.dropout, y)

    if self.layer_norm_first:
      y, position_bias = attn(norm("self_attn_layer_norm")(x), key_valid, position_bias, train)
      x = x + drop(self.dropout, y)
      return x + ffn(norm("final_layer_norm")(x)), position_bias
    y, position_bias = attn(x, key_valid, position_bias, train)
    x = norm("self_attn_layer_norm")(x * self.alpha + drop(self.dropout, y))
    return norm("final_layer_norm")(x * self.alpha + ffn(x)), position_bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def scale_gradient(x: jax.Array, factor: float) -> jax.Array:
  """`x` unchanged; its gradient multiplied by `factor` on the way back (the reference's
  `GradMultiply`)."""
  return x


def _scale_gradient_fwd(x, factor):
  return x, None


def _scale_gradient_bwd(factor, _, g):
  return (g * factor,)


scale_gradient.defvjp(_scale_gradient_fwd, _scale_gradient_bwd)


class BEATsTransformer(nn.Module):
  """The reference's `TransformerEncoder`: positional conv, LayerNorm, the layers.

  In training, each layer is skipped with probability `layerdrop` (a draw per layer and batch
  from rng stream "dropout": the layer's output is replaced by its input); before each layer the
  gradient flowing back into it is multiplied by `layer_gradient_ratio` (1: unchanged), so
  layer i's parameters get ratio^(L−1−i) of their gradient and the layers below ratio^L."""
  dim: int
  ffn_dim: int
  num_heads: int
  num_layers: int
  conv_pos: int = 128
  conv_pos_groups: int = 16
  layer_norm_first: bool = False
  deep_norm: bool = True
  activation_fn: str = "gelu"
  relative_position_embedding: bool = True
  num_buckets: int = 320
  max_distance: int = 800
  gru_rel_pos: bool = True
  dropout: float = 0.0
  attention_dropout: float = 0.0
  activation_dropout: float = 0.0
  layerdrop: float = 0.0
  layer_gradient_ratio: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, padding, train: bool = False):
    x = jnp.where(padding[..., None], 0.0, x).astype(self.dtype)
    conv = WeightNormConv1d(self.dim, self.conv_pos, self.conv_pos_groups, self.dtype,
                            name="pos_conv")(x)
    x = x + nn.gelu(conv.astype(jnp.float32), approximate=False).astype(self.dtype)
    norm = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="layer_norm")
    if not self.layer_norm_first:
      x = norm(x)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    alpha = (2.0 * self.num_layers) ** 0.25 if self.deep_norm else 1.0
    key_valid = ~padding
    position_bias = None
    for i in range(self.num_layers):
      attention = (("has_table", i == 0),
                   ("relative_position_embedding", self.relative_position_embedding),
                   ("num_buckets", self.num_buckets), ("max_distance", self.max_distance),
                   ("gru_rel_pos", self.gru_rel_pos),
                   ("attention_dropout", self.attention_dropout))
      if self.layer_gradient_ratio != 1.0:
        x = scale_gradient(x, self.layer_gradient_ratio)
      # The returned position bias is the shared table's, before the layer's gate: a dropped
      # layer's bias is what the next layer would compute.
      out, position_bias = BEATsLayer(
          self.dim, self.ffn_dim, self.num_heads, alpha, self.layer_norm_first,
          self.activation_fn, self.dropout, self.activation_dropout, attention, self.dtype,
          name=f"layers_{i}")(x, key_valid, position_bias, train)
      if train and self.layerdrop > 0:
        keep = jax.random.uniform(self.make_rng("dropout")) >= self.layerdrop
        out = jnp.where(keep, out, x)
      x = out
    if self.layer_norm_first:
      x = norm(x)
    return x


class BEATsEncoder(nn.Module):
  """The BEATs encoder. Field names are the checkpoint cfg's (`convert.beats_model_fields`);
  defaults are the released BEATs_iter3+ models' (≈ 90 M parameters).

  Attributes:
    input_patch_size: patch side p (16); embed_dim: patch width E (512); conv_bias: patch conv
      bias. encoder_layers / encoder_embed_dim / encoder_ffn_embed_dim /
      encoder_attention_heads: the transformer (12, 768, 3072, 12). activation_fn: "gelu" (erf)
      or "relu". layer_norm_first: pre-LN (the released models are post-LN); deep_norm: α =
      (2·L)^¼. conv_pos / conv_pos_groups: positional conv kernel and groups (128, 16).
      relative_position_embedding / num_buckets / max_distance / gru_rel_pos: the gated
      relative bias (True, 320, 800, True).
    dropout, attention_dropout, activation_dropout, dropout_input: dropout rates in training
      (rng stream "dropout"; the cfg's). encoder_layerdrop: the probability that training skips
      a layer (0). layer_wise_gradient_decay_ratio: the factor on the gradient flowing back into
      each layer (1: none; the reference's GradMultiply). Both as in `BEATsTransformer`.
    input_layout: "mel_time" (B, mels, T), as every frontend of this codebase gives, or
      "time_mel" (B, T, mels), the reference's layout.
    dtype: computation dtype (parameters, LayerNorm statistics and softmax stay float32).

  Call: `encoder.apply({"params": p}, fbank, padding_mask=None, train=False)` →
  (tokens (B, N, D) float32, token_padding (B, N) bool, True = padding); N = (T // p) · (mels // p).
  """
  input_patch_size: int = 16
  embed_dim: int = 512
  conv_bias: bool = False
  encoder_layers: int = 12
  encoder_embed_dim: int = 768
  encoder_ffn_embed_dim: int = 3072
  encoder_attention_heads: int = 12
  activation_fn: str = "gelu"
  layer_norm_first: bool = False
  deep_norm: bool = True
  conv_pos: int = 128
  conv_pos_groups: int = 16
  relative_position_embedding: bool = True
  num_buckets: int = 320
  max_distance: int = 800
  gru_rel_pos: bool = True
  dropout: float = 0.0
  attention_dropout: float = 0.0
  activation_dropout: float = 0.0
  dropout_input: float = 0.0
  encoder_layerdrop: float = 0.0
  layer_wise_gradient_decay_ratio: float = 1.0
  input_layout: str = "mel_time"
  dtype: Any = jnp.float32

  def check(self) -> None:
    """Raises ValueError naming the setting that cannot build a model."""
    if self.input_layout not in INPUT_LAYOUTS:
      raise ValueError(f"BEATs input_layout must be one of {INPUT_LAYOUTS}, got "
                       f"{self.input_layout!r}")
    if self.activation_fn not in ACTIVATIONS:
      raise ValueError(f"BEATs activation_fn must be one of {ACTIVATIONS}, got "
                       f"{self.activation_fn!r}")
    if self.encoder_embed_dim % self.encoder_attention_heads:
      raise ValueError(f"BEATs encoder_attention_heads={self.encoder_attention_heads} does not "
                       f"divide encoder_embed_dim={self.encoder_embed_dim}")
    if self.deep_norm and self.layer_norm_first:
      raise ValueError("BEATs: deep_norm and layer_norm_first exclude each other")
    if self.gru_rel_pos and not self.relative_position_embedding:
      raise ValueError("BEATs: gru_rel_pos gates the relative position bias: it needs "
                       "relative_position_embedding=True")
    if self.input_patch_size < 1:
      raise ValueError(f"BEATs input_patch_size must be ≥ 1, got {self.input_patch_size}")
    if not 0 <= self.encoder_layerdrop <= 1:
      raise ValueError(f"BEATs encoder_layerdrop must be a probability in [0, 1], got "
                       f"{self.encoder_layerdrop}")
    if not self.layer_wise_gradient_decay_ratio > 0:
      raise ValueError(f"BEATs layer_wise_gradient_decay_ratio must be > 0, got "
                       f"{self.layer_wise_gradient_decay_ratio}")

  @nn.compact
  def __call__(self, fbank: jax.Array, padding_mask: Optional[jax.Array] = None,
               train: bool = False) -> Tuple[jax.Array, jax.Array]:
    self.check()
    if fbank.ndim != 3:
      raise ValueError(f"BEATs expects fbank (B, mels, T) or (B, T, mels) "
                       f"(input_layout={self.input_layout!r}), got shape {fbank.shape}")
    x = fbank if self.input_layout == "time_mel" else jnp.swapaxes(fbank, 1, 2)  # (B, T, mels)
    batch, frames, mels = x.shape
    p = self.input_patch_size
    if frames < p or mels < p:
      raise ValueError(f"BEATs: fbank of {frames} frames × {mels} mels is smaller than one "
                       f"{p}×{p} patch (input_layout={self.input_layout!r})")
    if padding_mask is None:
      padding_mask = jnp.zeros((batch, frames), bool)
    if padding_mask.shape != (batch, frames):
      raise ValueError(f"BEATs padding_mask must be (B, frames) = {(batch, frames)}, got "
                       f"{padding_mask.shape}")
    x = nn.Conv(self.embed_dim, (p, p), (p, p), padding="VALID", use_bias=self.conv_bias,
                dtype=self.dtype, name="patch_embedding")(x[..., None].astype(self.dtype))
    rows, freq_patches = x.shape[1], x.shape[2]
    x = x.reshape(batch, rows * freq_patches, self.embed_dim)          # time-major tokens
    padding = token_padding(padding_mask, p, freq_patches)
    x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="layer_norm")(x)
    if self.embed_dim != self.encoder_embed_dim:
      x = nn.Dense(self.encoder_embed_dim, dtype=self.dtype, name="post_extract_proj")(x)
    x = nn.Dropout(self.dropout_input)(x, deterministic=not train)
    x = BEATsTransformer(
        self.encoder_embed_dim, self.encoder_ffn_embed_dim, self.encoder_attention_heads,
        self.encoder_layers, self.conv_pos, self.conv_pos_groups, self.layer_norm_first,
        self.deep_norm, self.activation_fn, self.relative_position_embedding, self.num_buckets,
        self.max_distance, self.gru_rel_pos, self.dropout, self.attention_dropout,
        self.activation_dropout, self.encoder_layerdrop, self.layer_wise_gradient_decay_ratio,
        self.dtype, name="encoder")(x, padding, train)
    return x.astype(jnp.float32), padding


HEADS = ("cosine", "linear")


class BEATsClassifier(BEATsEncoder):
  """The ContrastASC teacher (report 003 §2): BEATs → mean over valid tokens → embedding (B, D);
  a projection head D → projection_hidden (ReLU) → projection_dim, L2-normalised
  (`heads.ProjectionHead`); a cosine (γ = cosine_scale) or linear classifier on the embedding.

  Fields: every `BEATsEncoder` field (the checkpoint cfg's) plus n_classes, head ("cosine" |
  "linear"), cosine_scale (γ, 56), projection_dim (128), projection_hidden (768; 0 = one linear
  layer), projection_stop_gradient (the projection head reads the embedding without passing
  gradients back: a head trained beside a CE-only fine-tuning, which it leaves unchanged).

  Call: `model.apply(variables, x, train=False, return_features=False, padding_mask=None)`, x the
  fbank as `BEATsEncoder` reads it, padding_mask (B, frames) bool. Returns logits (B, n_classes),
  or with return_features a dict: `logits`, `embedding` (B, D) pooled, `projected`
  (B, projection_dim) unit norm, `tokens` (B, N, D), `token_padding` (B, N) bool.
  Parameters: `backbone/…` (the encoder: freeze it with the group regex `backbone/.*`),
  `projection/{hidden,out}/…`, `head/…`.
  """
  n_classes: int = 10
  head: str = "cosine"
  cosine_scale: float = 56.0
  projection_dim: int = 128
  projection_hidden: int = 768
  projection_stop_gradient: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False,
               padding_mask: Optional[jax.Array] = None):
    if self.head not in HEADS:
      raise ValueError(f"BEATsClassifier head must be one of {HEADS}, got {self.head!r}")
    fields = {name: getattr(self, name) for name in BEATsEncoder.__dataclass_fields__
              if name not in ("parent", "name")}
    tokens, padding = BEATsEncoder(**fields, name="backbone")(x, padding_mask, train)
    valid = (~padding).astype(jnp.float32)[..., None]
    embedding = (tokens * valid).sum(1) / jnp.maximum(valid.sum(1), 1.0)
    projection_input = (jax.lax.stop_gradient(embedding) if self.projection_stop_gradient
                        else embedding)
    projected = heads.ProjectionHead(self.projection_dim, hidden=self.projection_hidden or None,
                                     name="projection")(projection_input)
    if self.head == "cosine":
      logits = heads.CosineClassifier(self.n_classes, scale=self.cosine_scale,
                                      name="head")(embedding)
    else:
      logits = nn.Dense(self.n_classes, name="head")(embedding)
    if not return_features:
      return logits
    return {"logits": logits, "embedding": embedding, "projected": projected, "tokens": tokens,
            "token_padding": padding}
