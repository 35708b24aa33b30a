"""CRNN: a convolutional-recurrent teacher (report 002's "CRNN", built from scratch).

Report 002 names a CRNN among its teacher architectures without specifying it. Our choice, the
common CRNN of DCASE sound-event systems (e.g. the DCASE Task 4 baseline: convolution blocks,
then a bidirectional GRU over time):
* `len(pools)` convolution blocks, each Conv 3×3 (no bias) → BatchNorm → ReLU → average pool
  `pools[i]` = (frequency, time); block i has `base_channels · channel_multipliers[i]` channels;
* the frequency axis averaged out: (B, T', C);
* `rnn_layers` bidirectional GRU layers of `rnn_hidden` units per direction (PyTorch's gate
  equations, `torch.nn.GRU`), the two directions concatenated;
* the mean over time → Linear → logits.
The recurrence is unrolled over the T' pooled frames (about 10 for a 1-s clip at the CP-ResNet
teachers' hop of 750 samples), so every step is an ordinary module call: `eval.complexity`
counts its MACs like any other layer. Long inputs (a 10-s clip: T' ≈ 100) compile slowly.

Input (B, n_mels, frames) log-mels (or (B, n_mels, frames, 1)), NHWC inside (H = frequency,
W = time). Output logits (B, n_classes), or with `return_features=True` a dict with the
convolutional `cnn` map (B, F', T', C), the recurrent `rnn` sequence (B, T', 2·rnn_hidden), the
pooled `embedding` and `logits`.
"""
from __future__ import annotations

from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from jax_asc.models import layers

kaiming_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class GRUDirection(nn.Module):
  """One direction of a GRU layer over (B, T, D) → (B, T, hidden), h₀ = 0 (torch.nn.GRU):

    r = σ(W_ir x + b_ir + W_hr h + b_hr),  z = σ(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)),  h' = (1 − z) ⊙ n + z ⊙ h
  """
  hidden: int
  reverse: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, steps, _ = x.shape
    projected = nn.Dense(3 * self.hidden, dtype=self.dtype, name="input")(x)   # all steps at once
    recurrent = nn.Dense(3 * self.hidden, dtype=self.dtype, name="hidden")
    h = jnp.zeros((batch, self.hidden), jnp.float32)
    outputs = [None] * steps
    order = range(steps - 1, -1, -1) if self.reverse else range(steps)
    for t in order:
      xr, xz, xn = jnp.split(projected[:, t].astype(jnp.float32), 3, axis=-1)
      hr, hz, hn = jnp.split(recurrent(h.astype(self.dtype)).astype(jnp.float32), 3, axis=-1)
      r = nn.sigmoid(xr + hr)
      z = nn.sigmoid(xz + hz)
      n = jnp.tanh(xn + r * hn)
      h = (1 - z) * n + z * h
      outputs[t] = h
    return jnp.stack(outputs, axis=1).astype(self.dtype)


class CRNN(nn.Module):
  """Convolution blocks → bidirectional GRU → mean over time → Linear.

  Attributes:
    base_channels: channels of the first block.
    channel_multipliers: block i has base_channels · channel_multipliers[i] channels.
    pools: (frequency, time) average-pool size after each block (one per block).
    rnn_hidden: GRU units per direction; rnn_layers: stacked bidirectional layers.
  """
  n_classes: int = 10
  base_channels: int = 32
  channel_multipliers: Sequence[int] = (1, 2, 4, 4)
  pools: Sequence[Tuple[int, int]] = ((4, 2), (4, 2), (4, 1), (2, 1))
  rnn_hidden: int = 64
  rnn_layers: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    if len(self.pools) != len(self.channel_multipliers):
      raise ValueError(f"CRNN: pools {tuple(self.pools)} and channel_multipliers "
                       f"{tuple(self.channel_multipliers)} need one entry per block")
    if x.ndim == 3:
      x = x[..., None]
    x = x.astype(self.dtype)
    for i, (multiplier, pool) in enumerate(zip(self.channel_multipliers, self.pools)):
      x = nn.Conv(int(self.base_channels * multiplier), (3, 3), padding="SAME", use_bias=False,
                  kernel_init=kaiming_fan_in, dtype=self.dtype, name=f"conv{i + 1}")(x)
      x = nn.relu(layers.make_norm("batch", train, self.dtype, name=f"bn{i + 1}")(x))
      pool = tuple(int(p) for p in pool)
      if x.shape[1] < pool[0] or x.shape[2] < pool[1]:
        raise ValueError(f"CRNN block {i + 1}: a {x.shape[1]}×{x.shape[2]} map cannot be pooled "
                         f"by {pool}; the input {x.shape} is too small for pools "
                         f"{tuple(self.pools)}")
      x = nn.avg_pool(x, pool, pool)
    cnn = x
    sequence = jnp.mean(x, axis=1)   # (B, T', C): frequency averaged out
    for layer in range(self.rnn_layers):
      forward = GRUDirection(self.rnn_hidden, dtype=self.dtype, name=f"gru{layer + 1}_fwd")
      backward = GRUDirection(self.rnn_hidden, reverse=True, dtype=self.dtype,
                              name=f"gru{layer + 1}_bwd")
      sequence = jnp.concatenate([forward(sequence), backward(sequence)], axis=-1)
    embedding = jnp.mean(sequence.astype(jnp.float32), axis=1)
    logits = nn.Dense(self.n_classes, name="head")(embedding)
    if not return_features:
      return logits
    return {"cnn": cnn, "rnn": sequence, "embedding": embedding, "logits": logits}


def expected_params(n_classes=10, base_channels=32, channel_multipliers=(1, 2, 4, 4),
                    rnn_hidden=64, rnn_layers=2) -> int:
  """Parameter count by formula (conv weights + BN γ, β; GRU weights and both biases), for tests
  and for choosing sizes."""
  total, cin = 0, 1
  for multiplier in channel_multipliers:
    cout = int(base_channels * multiplier)
    total += 9 * cin * cout + 2 * cout
    cin = cout
  for _ in range(rnn_layers):
    total += 2 * (3 * rnn_hidden * (cin + 1) + 3 * rnn_hidden * (rnn_hidden + 1))
    cin = 2 * rnn_hidden
  return total + cin * n_classes + n_classes
