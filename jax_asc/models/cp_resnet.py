"""CP-ResNet: the receptive-field-regularised ResNet teacher of CPJKU's DCASE systems.

Reference: fschmid56/cpjku_dcase23 `models/cp_resnet.py` (Koutini et al., "Receptive-field-
regularized CNN variants for acoustic scene classification"); facts in
`../shared/reference/models_and_frontends.md` §2. `rho` sets the kernel sizes and so the receptive
field; `base_channels` and `channels_multiplier` set the size (report 002 studies 128 K to
several M parameters; the defaults give 127,684).

Input (B, n_mels, frames) log-mels (or (B, n_mels, frames, 1)), NHWC inside (H = frequency,
W = time). Output logits (B, n_classes), or with `return_features=True` a dict with the stage
outputs `stem`, `s1`, `s2`, `s3`, the pooled `embedding` (B, C_s3) and `logits`.
"""
from __future__ import annotations

from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from jax_asc.models import layers

kaiming_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def stage_kernels(rho: int) -> Tuple[Tuple[Tuple[int, int], ...], ...]:
  """(k1, k2) of each block of the three stages (two entries per stage), as `get_model(rho)`."""
  e = rho - 4
  s1 = ((3, 1), (3 - (-e > 2) * 2, 3 - (-e > 1) * 2))
  s2 = ((3 - (-e > 0) * 2, 1 + (e > 0) * 2), (1 + (e > 1) * 2, 1 + (e > 2) * 2))
  s3 = ((1 + (e > 3) * 2, 1 + (e > 4) * 2), (1 + (e > 5) * 2, 1 + (e > 6) * 2))
  return s1, s2, s3


def _conv(features, k, groups, init, name, dtype):
  pad = k // 3   # the reference's calc_padding: "same" for k = 1, 3 (not for 5)
  return nn.Conv(features, (k, k), padding=((pad, pad), (pad, pad)), use_bias=False,
                 feature_group_count=groups, kernel_init=init, dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """conv k1 → BN → ReLU → conv k2 → BN, + shortcut (1×1 conv + BN when channels change), ReLU.

  Fixup-style init as the reference: conv1 ~ N(0, 2/(k²·out) / n_blocks_total), conv2 = 0.
  """
  out_channels: int
  k1: int
  k2: int
  groups: int
  n_blocks_total: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    conv1_init = nn.initializers.variance_scaling(2.0 / self.n_blocks_total, "fan_out", "normal")
    y = _conv(self.out_channels, self.k1, self.groups, conv1_init, "conv1", self.dtype)(x)
    y = nn.relu(layers.make_norm("batch", train, self.dtype, name="bn1")(y))
    y = _conv(self.out_channels, self.k2, self.groups, nn.initializers.zeros, "conv2",
              self.dtype)(y)
    y = layers.make_norm("batch", train, self.dtype, name="bn2")(y)
    shortcut = x
    if x.shape[-1] != self.out_channels:
      shortcut = _conv(self.out_channels, 1, self.groups, kaiming_fan_out, "shortcut_conv",
                       self.dtype)(x)
      shortcut = layers.make_norm("batch", train, self.dtype, name="shortcut_bn")(shortcut)
    return nn.relu(y + shortcut)


class CPResNet(nn.Module):
  """CP-ResNet with the reference's `get_model` knobs.

  Attributes:
    n_classes: output classes.
    rho: receptive-field parameter (kernel sizes per block, `stage_kernels`).
    base_channels: stage-1 channels; stage 2 has base·m − cut_channels_s2, stage 3 base·m² −
      cut_channels_s3 (m = channels_multiplier).
    n_blocks: blocks per stage (at most 2 each, as the reference's kernel lists).
    groups: convolution groups per stage.
    maxpool_positions_s1: max-pool positions in stage 1 (0 = before block 1: (2, 2); i = after
      block i: (2, 1)).
  """
  n_classes: int = 10
  rho: int = 8
  base_channels: int = 32
  channels_multiplier: float = 2.0
  cut_channels_s2: int = 0
  cut_channels_s3: int = 36
  n_blocks: Sequence[int] = (2, 1, 1)
  groups: Sequence[int] = (1, 2, 1)
  maxpool_positions_s1: Sequence[int] = (0, 1, 2, 4)
  dtype: Any = jnp.float32

  def stage_channels(self):
    m = self.channels_multiplier
    return [int(self.base_channels), int(self.base_channels * m - self.cut_channels_s2),
            int(self.base_channels * m * m - self.cut_channels_s3)]

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    if any(n > 2 for n in self.n_blocks):
      raise ValueError(f"n_blocks {tuple(self.n_blocks)}: at most 2 blocks per stage (the "
                       "reference defines kernel sizes for two)")
    if x.ndim == 3:
      x = x[..., None]
    x = x.astype(self.dtype)
    channels = self.stage_channels()
    total = sum(self.n_blocks)
    features = {}
    x = nn.Conv(channels[0], (5, 5), (2, 2), padding=((1, 1), (1, 1)), use_bias=False,
                kernel_init=kaiming_fan_in, dtype=self.dtype, name="stem_conv")(x)
    x = nn.relu(layers.make_norm("batch", train, self.dtype, name="stem_bn")(x))
    features["stem"] = x
    for stage, (n_blocks, kernels) in enumerate(zip(self.n_blocks, stage_kernels(self.rho))):
      if stage == 0 and 0 in self.maxpool_positions_s1:
        x = nn.max_pool(x, (2, 2), (2, 2))
      for index in range(n_blocks):
        k1, k2 = kernels[index]
        x = BasicBlock(channels[stage], k1, k2, int(self.groups[stage]), total, self.dtype,
                       name=f"s{stage + 1}_b{index + 1}")(x, train)
        if stage == 0 and index + 1 in self.maxpool_positions_s1:
          x = nn.max_pool(x, (2, 1), (2, 1))
      features[f"s{stage + 1}"] = x
    embedding = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    y = nn.Conv(self.n_classes, (1, 1), use_bias=False, kernel_init=nn.initializers.zeros,
                dtype=self.dtype, name="head_conv")(x)
    y = layers.make_norm("batch", train, self.dtype, name="head_bn")(y)
    logits = jnp.mean(y.astype(jnp.float32), axis=(1, 2))
    if not return_features:
      return logits
    features.update(embedding=embedding, logits=logits)
    return features


def expected_params(n_classes=10, rho=8, base_channels=32, channels_multiplier=2.0,
                    cut_channels_s2=0, cut_channels_s3=36, n_blocks=(2, 1, 1),
                    groups=(1, 2, 1)) -> int:
  """Parameter count of the reference network by formula (weights + BN γ, β), for tests."""
  channels = CPResNet(base_channels=base_channels, channels_multiplier=channels_multiplier,
                      cut_channels_s2=cut_channels_s2,
                      cut_channels_s3=cut_channels_s3).stage_channels()
  total = 25 * channels[0] + 2 * channels[0]
  cin = channels[0]
  for stage, kernels in enumerate(stage_kernels(rho)):
    cout, g = channels[stage], groups[stage]
    for index in range(n_blocks[stage]):
      k1, k2 = kernels[index]
      total += k1 * k1 * cin // g * cout + 2 * cout + k2 * k2 * cout // g * cout + 2 * cout
      if cin != cout:
        total += cin // g * cout + 2 * cout
      cin = cout
  return total + cin * n_classes + 2 * n_classes
