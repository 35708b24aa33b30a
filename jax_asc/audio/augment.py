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


# ----------------------------------------------------------------------------- waveforms
# Each augmentation is a deterministic core (explicit parameters, the same in
# `jax_asc.data.tf_augment` for tf.data) and a sampler that draws the parameters from a key.
def roll_by(x: jax.Array, shifts: jax.Array) -> jax.Array:
  """Circular shift of each row of x (B, N) by shifts (B,) samples (`torch.roll` direction)."""
  n = x.shape[-1]
  source = (jnp.arange(n)[None, :] - shifts[:, None]) % n
  return jnp.take_along_axis(x, source, axis=-1)


def time_roll(key: jax.Array, x: jax.Array, max_shift: int) -> jax.Array:
  """Rolls each clip by s ~ U{−max_shift … max_shift} samples (d23: 4000 at 32 kHz). 0 = off."""
  if max_shift <= 0:
    return x
  shifts = jax.random.randint(key, (x.shape[0],), -max_shift, max_shift + 1)
  return roll_by(x, shifts)


def gain_by(x: jax.Array, gains_db: jax.Array) -> jax.Array:
  """Scales each row of x (B, N) by 10^(g/20) for gains_db (B,)."""
  return x * (10.0 ** (gains_db / 20.0))[:, None].astype(x.dtype)


def random_gain(key: jax.Array, x: jax.Array, max_db: float) -> jax.Array:
  """Gain g ~ U(−max_db, max_db) dB per clip. 0 = off."""
  if max_db <= 0:
    return x
  return gain_by(x, jax.random.uniform(key, (x.shape[0],), minval=-max_db, maxval=max_db))


def fft_length(num_samples: int, ir_length: int) -> int:
  """Smallest power of two ≥ the full convolution length N + L − 1."""
  full = num_samples + ir_length - 1
  return 1 << (full - 1).bit_length()


def convolve_truncated(x: jax.Array, irs: jax.Array) -> jax.Array:
  """`scipy.signal.convolve(x, ir, 'full')[:N]` row by row, via FFT: x (B, N), irs (B, L)."""
  n = x.shape[-1]
  size = fft_length(n, irs.shape[-1])
  spectrum = (jnp.fft.rfft(x.astype(jnp.float32), size) *
              jnp.fft.rfft(irs.astype(jnp.float32), size))
  return jnp.fft.irfft(spectrum, size)[:, :n].astype(x.dtype)


def device_impulse_response(key: jax.Array, x: jax.Array, irs: jax.Array, prob: float,
                            eligible: jax.Array | None = None) -> jax.Array:
  """DIR augmentation (d23 `DIRAugmentDataset`): with probability `prob`, each eligible clip is
  convolved with one impulse response drawn uniformly from irs (M, L) and truncated to its
  length; no normalisation or gain compensation. eligible (B,) bool: e.g. device == 'a' only."""
  if prob <= 0:
    return x
  k_pick, k_apply = jax.random.split(key)
  choice = jax.random.randint(k_pick, (x.shape[0],), 0, irs.shape[0])
  apply = jax.random.uniform(k_apply, (x.shape[0],)) < prob
  if eligible is not None:
    apply = apply & eligible
  convolved = convolve_truncated(x, irs[choice])
  return jnp.where(apply[:, None], convolved, x)


# ----------------------------------------------------------------------------- spectrogram styles
def mix_statistics(x: jax.Array, perm: jax.Array, lam: jax.Array, axes: tuple,
                   eps: float = 1e-6) -> jax.Array:
  """MixStyle core: normalise x by its own statistics over `axes` (unbiased variance, stopped
  gradients) and re-style it with λ-mixed statistics of x[perm]. lam (B,), perm (B,)."""
  x32 = x.astype(jnp.float32)
  mu = jax.lax.stop_gradient(jnp.mean(x32, axis=axes, keepdims=True))
  count = 1
  for a in axes:
    count *= x.shape[a]
  var = jnp.sum(jnp.square(x32 - mu), axis=axes, keepdims=True) / max(count - 1, 1)
  sig = jax.lax.stop_gradient(jnp.sqrt(var + eps))
  lam = lam.reshape((-1,) + (1,) * (x.ndim - 1))
  mixed_sig = lam * sig + (1 - lam) * sig[perm]
  mixed_mu = lam * mu + (1 - lam) * mu[perm]
  return (((x32 - mu) / sig) * mixed_sig + mixed_mu).astype(x.dtype)


def mixstyle(key: jax.Array, x: jax.Array, p: float, alpha: float, *,
             frequency_wise: bool = True, eps: float = 1e-6) -> jax.Array:
  """(Freq-)MixStyle on log-mels x (B, F, T), as d23/d25 `helpers.utils.mixstyle`.

  With probability p (one coin for the whole batch), λ ~ Beta(α, α) per example and a random
  permutation mix the statistics. `frequency_wise`: statistics per (example, frequency bin) over
  time (Freq-MixStyle, Kim et al. 2022); otherwise per example over (F, T) (MixStyle of a
  one-channel input, Zhou et al. 2021). p = 0 = off.
  """
  if p <= 0:
    return x
  k_apply, k_lam, k_perm = jax.random.split(key, 3)
  lam = jax.random.beta(k_lam, alpha, alpha, (x.shape[0],))
  perm = jax.random.permutation(k_perm, x.shape[0])
  axes = (2,) if frequency_wise else (1, 2)
  mixed = mix_statistics(x, perm, lam, axes, eps)
  return jnp.where(jax.random.uniform(k_apply) < p, mixed, x)


def mixup_draw(key: jax.Array, batch_size: int, alpha: float):
  """Mixup parameters (PaSST/EfficientAT): perm (B,) and λ = max(b, 1 − b), b ~ Beta(α, α)."""
  k_lam, k_perm = jax.random.split(key)
  b = jax.random.beta(k_lam, alpha, alpha, (batch_size,))
  return jax.random.permutation(k_perm, batch_size), jnp.maximum(b, 1 - b)


def mix(x: jax.Array, perm: jax.Array, lam: jax.Array) -> jax.Array:
  """λ·x + (1 − λ)·x[perm] along the batch axis (inputs, one-hot labels or probabilities)."""
  lam = lam.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
  return lam * x + (1 - lam) * x[perm]
