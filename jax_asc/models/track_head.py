"""Report 004's tagging head: K event tracks from a sequence of encoder tokens, and the 4c input
of channel-wise tokens with spatial-token masking.

`TrackHead` is the T4 baseline's `HeadAvgLinear` (../shared/reference/models_and_frontends.md,
"Task-4 tagger head"):
  x = mean over tokens                                   (B, D)
  x = BatchNorm(x) without scale or shift (PyTorch's: eps 1e-5, momentum 0.1, the running
      variance of the unbiased batch variance; `layers.BatchNorm(affine=False)`)
  x = ReLU(LayerNorm(Linear(D → K·track_input_dim)(x)))  (LayerNorm over all K·1024 before the split)
  track k (its own weights): Linear(1024 → 512) → LayerNorm → ReLU → Linear(512 → classes)
                                                         → logits (B, K, classes)
1c: the tokens of the mixture's reference channel, D = 768. 4c: each channel encoded alone and
the channels concatenated per token (`concatenate_channels`), D = 4·768. LayerNorm eps is
PyTorch's default 1e-5 here.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_asc.models import layers


def _torch_linear(features: int, fan_in: int, name: str) -> nn.Dense:
  """A Linear with PyTorch's default init, uniform(±1/√fan_in) weights and bias (the reference
  trains the head from scratch)."""
  bound = 1.0 / float(fan_in) ** 0.5
  return nn.Dense(features, name=name,
                  kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                  bias_init=lambda key, shape, dtype=jnp.float32: jax.random.uniform(
                      key, shape, dtype, -bound, bound))


def _layer_norm(name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name=name)


class TrackHead(nn.Module):
  """(B, N, D) tokens → (B, num_tracks, num_classes) logits (float32)."""
  num_tracks: int = 3
  num_classes: int = 19                    # 18 event classes + silence
  track_input_dim: int = 1024
  track_hidden_dim: Optional[int] = 512    # None: one Linear per track

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
    x = jnp.mean(tokens.astype(jnp.float32), axis=1)
    x = layers.BatchNorm(use_running_average=not train, affine=False, name="token_norm")(x)
    x = _torch_linear(self.num_tracks * self.track_input_dim, x.shape[-1], "split")(x)
    x = nn.relu(_layer_norm("split_norm")(x))
    x = x.reshape(x.shape[0], self.num_tracks, self.track_input_dim)
    logits = []
    for k in range(self.num_tracks):
      y = x[:, k]
      if self.track_hidden_dim is not None:
        y = _torch_linear(self.track_hidden_dim, y.shape[-1], f"track{k}_hidden")(y)
        y = nn.relu(_layer_norm(f"track{k}_norm")(y))
      logits.append(_torch_linear(self.num_classes, y.shape[-1], f"track{k}_out")(y))
    return jnp.stack(logits, axis=1)


def concatenate_channels(tokens: jax.Array) -> jax.Array:
  """(B, C, N, D) tokens of C channels encoded one by one → (B, N, C·D), channel-major per
  token (the 4c tagger's input)."""
  b, c, n, d = tokens.shape
  return jnp.transpose(tokens, (0, 2, 1, 3)).reshape(b, n, c * d)


def mask_spatial_tokens(key: jax.Array, tokens: jax.Array, rate: float) -> jax.Array:
  """Report 004 §2.2's spatial-token masking of the 4c model in training: each channel's token
  (B, C, N, D)[b, c, n] is zeroed with probability `rate` (0.3 in the report), independently.

  The report says only that "30% of spatial tokens are masked"; we read a spatial token as one
  channel's encoding of one time-frequency patch and mask it by zeroing before the channels are
  concatenated, so the head cannot rely on any single channel. No rescaling (it is not dropout:
  the evaluation input has every channel)."""
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"spatial-token mask rate must be in [0, 1), got {rate}")
  keep = jax.random.bernoulli(key, 1.0 - rate, tokens.shape[:3])
  return tokens * keep[..., None].astype(tokens.dtype)
