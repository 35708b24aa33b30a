"""CP-Mobile (receptive-field-regularised MobileNet) student, as in CPJKU's DCASE systems.

Reference: fschmid56/cpjku_dcase23 `models/cp_mobile_clean.py` (with GRN) and
CPJKU/dcase2025_task1_baseline `models/net.py` (no GRN, other strides); facts in
`../shared/reference/models_and_frontends.md` §1.

Input (B, n_mels, frames) log-mel features (or (B, n_mels, frames, 1)); layout inside is NHWC with
H = frequency, W = time. Output logits (B, n_classes), or with `return_features=True` a dict with
the stage outputs (`stem`, `s1`, `s2`, `s3`), the pooled `embedding` (B, C_last) and `logits`.
"""
from __future__ import annotations

from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from jax_asc.models import heads, layers


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
    norm: "batch" (reference) or "layer" (channel LayerNorm, report 003).
    head: "conv" (1×1 conv → norm → global average pool, reference) or "cosine"
      (global average pool → cosine classifier with scale `cosine_scale`).
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
    if self.head not in ("conv", "cosine"):
      raise ValueError(f"head must be 'conv' or 'cosine', got {self.head!r}")
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
    embedding = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if self.head == "conv":
      y = layers.PointwiseConv(self.n_classes, dtype=self.dtype, name="head_conv")(x)
      y = layers.make_norm(self.norm, train, self.dtype, name="head_norm")(y)
      logits = jnp.mean(y.astype(jnp.float32), axis=(1, 2))
    else:
      logits = heads.CosineClassifier(self.n_classes, self.cosine_scale, name="head_cosine")(
          embedding)
    if not return_features:
      return logits
    features.update(embedding=embedding, logits=logits)
    return features
