"""CP-Mobile (receptive-field-regularised MobileNet) student, as in CPJKU's DCASE systems.

Reference: fschmid56/cpjku_dcase23 `models/cp_mobile_clean.py` (with GRN) and
CPJKU/dcase2025_task1_baseline `models/net.py` (no GRN, other strides); facts in
`../shared/reference/models_and_frontends.md` §1.

Input (B, n_mels, frames) log-mel features (or (B, n_mels, frames, 1)); layout inside is NHWC with
H = frequency, W = time. Output logits (B, n_classes), or with `return_features=True` a dict with
the stage outputs (`stem`, `s1`, `s2`, `s3`), `embedding` (B, C_last), `embedding_prenorm`
(B, C_last) and `logits`.

Heads:
* "conv" (reference): 1×1 conv → norm → global average pool. `embedding` = `embedding_prenorm` =
  the global average pool of the last stage.
* "cosine": global average pool → cosine classifier (γ = `cosine_scale`); embeddings as "conv".
* "norm_cosine" (report 003 §3): global average pool → LayerNorm1D → cosine classifier.
  `embedding` is taken after the norm (what CRD projects), `embedding_prenorm` before it (what the
  report's few-shot evaluation reads).

`norm` ("batch", "layer", "none") is the norm of every convolution; `head_norm` that of the head
(the conv head's norm after its 1×1 conv, or norm_cosine's 1-D norm over the pooled embedding),
by default the same kind as `norm`. Report 003's table 2: "ours" is norm = head_norm = "layer",
"- LayerNorm" norm = head_norm = "none", "+ BatchNorm" norm = head_norm = "batch" (a BatchNorm1D
over the pooled embedding, running statistics in evaluation).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from jax_asc.models import heads, layers


HEADS = ("conv", "cosine", "norm_cosine")


class InvertedResidual(nn.Module):
  """1×1 expand → 3×3 depthwise (stride) → 1×1 project; shortcut only when channels match."""
  out_channels: int
  expansion_channels: int
  strides: Tuple[int, int]
  use_grn: bool
  norm: str
  dtype: Any

  @nn.compact
  def __call__(self, x, train: bool):
    in_channels = x.shape[-1]
    # In training each norm + ReLU runs inside the next convolution's pass (`DeferredNorm`).
    y = layers.ConvNormAct(self.expansion_channels, (1, 1), norm=self.norm, defer_norm=True,
                           dtype=self.dtype, name="expand")(x, train)
    y = layers.ConvNormAct(self.expansion_channels, (3, 3), self.strides, depthwise=True,
                           norm=self.norm, defer_norm=True, dtype=self.dtype,
                           name="depthwise")(y, train)
    y = layers.ConvNormAct(self.out_channels, (1, 1), activation=False, norm=self.norm,
                           dtype=self.dtype, name="project")(y, train)
    if in_channels == self.out_channels:
      if tuple(self.strides) == (1, 1):
        y = y + x
      else:
        y = y + layers.avg_pool_shortcut(x, self.strides)
    if self.use_grn:
      y = layers.GRN(name="grn")(y)
    return nn.relu(y)


class CPMobile(nn.Module):
  """CP-Mobile with configurable width, depth, strides, GRN, norm and head.

  Attributes:
    n_classes: output classes.
    base_channels: stem output channels (rounded to a multiple of 8).
    channels_multiplier: stage i has base·multiplier**i channels (rounded).
    expansion_rate: expansion channels = block input channels · rate (rounded).
    n_blocks: blocks per stage.
    strides: (freq, time) stride of every block, in order b1, b2, …
    use_grn: GRN before each block's final ReLU (DCASE23 winner).
    norm: "batch" (reference), "layer" (channel LayerNorm, report 003) or "none" (no norm, the
      report 003 ablation), for every convolution.
    head: "conv" (1×1 conv → norm → global average pool, reference), "cosine" (global average
      pool → cosine classifier with scale `cosine_scale`) or "norm_cosine" (global average
      pool → `head_norm` → cosine classifier, report 003).
    head_norm: the head's norm ("batch", "layer", "none"); None: the same as `norm`.
  """
  n_classes: int = 10
  base_channels: int = 32
  channels_multiplier: float = 1.8
  expansion_rate: float = 2.1
  n_blocks: Sequence[int] = (3, 2, 1)
  strides: Sequence[Tuple[int, int]] = ((1, 1), (1, 1), (1, 2), (2, 1), (1, 1), (1, 1))
  use_grn: bool = False
  norm: str = "batch"
  head: str = "conv"
  head_norm: Optional[str] = None
  cosine_scale: float = 10.0
  dtype: Any = jnp.float32

  def stage_channels(self):
    base = layers.make_divisible(self.base_channels, 8)
    return [base] + [layers.make_divisible(base * self.channels_multiplier ** i, 8)
                     for i in range(len(self.n_blocks))]

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    if len(self.strides) != sum(self.n_blocks):
      raise ValueError(f"strides has {len(self.strides)} entries, expected one per block "
                       f"({sum(self.n_blocks)} for n_blocks={tuple(self.n_blocks)})")
    if self.head not in HEADS:
      raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
    head_norm = self.norm if self.head_norm is None else self.head_norm
    for field, kind in (("norm", self.norm), ("head_norm", head_norm)):
      if kind not in layers.NORMS:
        raise ValueError(f"{field} must be one of {layers.NORMS}, got {kind!r}")
    if x.ndim == 3:
      x = x[..., None]
    x = x.astype(self.dtype)
    channels = self.stage_channels()
    features = {}
    x = layers.ConvNormAct(channels[0] // 4, (3, 3), (2, 2), norm=self.norm, dtype=self.dtype,
                           name="stem_0")(x, train)
    x = layers.ConvNormAct(channels[0], (3, 3), (2, 2), norm=self.norm, dtype=self.dtype,
                           name="stem_1")(x, train)
    features["stem"] = x
    block = 0
    for stage, n_blocks in enumerate(self.n_blocks):
      for _ in range(n_blocks):
        in_channels = x.shape[-1]
        x = InvertedResidual(
            out_channels=channels[stage + 1],
            expansion_channels=layers.make_divisible(in_channels * self.expansion_rate, 8),
            strides=tuple(self.strides[block]), use_grn=self.use_grn, norm=self.norm,
            dtype=self.dtype, name=f"b{block + 1}")(x, train)
        block += 1
      features[f"s{stage + 1}"] = x
    embedding = prenorm = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if self.head == "conv":
      y = layers.PointwiseConv(self.n_classes, dtype=self.dtype, name="head_conv")(x)
      y = layers.make_norm(head_norm, train, self.dtype, name="head_norm")(y)
      logits = jnp.mean(y.astype(jnp.float32), axis=(1, 2))
    else:
      if self.head == "norm_cosine":   # LayerNorm1D (or its ablations) over the pooled embedding
        embedding = layers.make_norm(head_norm, train, jnp.float32, name="embedding_norm")(
            prenorm).astype(jnp.float32)
      logits = heads.CosineClassifier(self.n_classes, self.cosine_scale, name="head_cosine")(
          embedding)
    if not return_features:
      return logits
    features.update(embedding=embedding, embedding_prenorm=prenorm, logits=logits)
    return features
