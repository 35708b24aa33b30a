"""Augmentations as pure functions: arrays and an explicit PRNG key in, arrays out.

Spectral masks follow torchaudio's `FrequencyMasking` / `TimeMasking` (SpecAugment): the width is
`floor(u1 · W)` (so 0 … W-1) and the start `floor(u2 · (size − u1 · W))`; masked values are set
to `mask_value`. Each independent draw uses its own key.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def jitter_corner(key: jax.Array, value: float, aug_range: int, direction: int) -> jax.Array:
  """One-per-batch jitter of a mel corner frequency, as the d23 `AugmentMelSTFT` does.

  direction=+1 (fmin): `value + randint(0, aug_range)`.
  direction=-1 (fmax): `value + aug_range // 2 − randint(0, aug_range)`.
  An `aug_range` of 0 or 1 leaves the value unchanged. Returns a float32 scalar.
  """
  value = jnp.asarray(value, jnp.float32)
  if aug_range <= 1:
    return value
  draw = jax.random.randint(key, (), 0, aug_range).astype(jnp.float32)
  if direction > 0:
    return value + draw
  return value + aug_range // 2 - draw


def _axis_mask(key: jax.Array, shape: tuple, axis: int, max_width: int, iid: bool) -> jax.Array:
  """Boolean mask broadcastable to `shape`, True inside one band per example along `axis`."""
  size = shape[axis]
  n = shape[0] if iid else 1
  k_width, k_start = jax.random.split(key)
  width = jax.random.uniform(k_width, (n,)) * max_width
  start = jnp.floor(jax.random.uniform(k_start, (n,)) * (size - width))
  end = start + jnp.floor(width)
  positions = jnp.arange(size, dtype=jnp.float32)
  band = (positions[None, :] >= start[:, None]) & (positions[None, :] < end[:, None])  # (n, size)
  view = [1] * len(shape)
  view[0], view[axis] = n, size
  return band.reshape(view)


def frequency_mask(key, x: jax.Array, max_width: int, *, iid: bool = True,
                   mask_value: float = 0.0) -> jax.Array:
  """Masks a band of up to `max_width - 1` mel bins in x (B, F, T). 0 = off."""
  if max_width <= 0:
    return x
  return jnp.where(_axis_mask(key, x.shape, 1, max_width, iid), mask_value, x)


def time_mask(key, x: jax.Array, max_width: int, *, iid: bool = True,
              mask_value: float = 0.0) -> jax.Array:
  """Masks a band of up to `max_width - 1` frames in x (B, F, T). 0 = off."""
  if max_width <= 0:
    return x
  return jnp.where(_axis_mask(key, x.shape, 2, max_width, iid), mask_value, x)
