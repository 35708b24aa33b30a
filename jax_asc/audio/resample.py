"""Band-limited (windowed-sinc, Hann) resampling: the taps, and the in-graph JAX form.

The same kernel as torchaudio's `sinc_interp_hann` resampler (lowpass_filter_width 6, rolloff
0.99), which the DCASE 2024/2025 baselines apply at load time. `jax_asc.data.audio_io` resamples
clips once with it in NumPy; `resample` here does the same inside a jitted step, e.g. for an
online teacher that runs at another sample rate than the student's data (32 → 16 kHz).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=32)
def sinc_phases(orig: int, new: int, width_zeros: int = 6, rolloff: float = 0.99) -> tuple:
  """(taps (new, 2·pad + 1) float32, start (new,) int, pad) of the polyphase windowed sinc.

  Rates are gcd-reduced (`orig` → `new`). Output j + m·new is the input interpolated at input
  sample m·orig + j·orig/new by an ideal low-pass of cutoff rolloff · min(orig, new) / 2 (so
  `base` = rolloff · min(orig, new) is twice the cutoff): tap weight sinc(t) · cos²(π t / (2 W)) ·
  base / orig at t = base · (input offset) / orig, clamped to |t| ≤ W = `width_zeros` zero
  crossings (unit DC gain). `pad` = ceil(W · orig / base) zeros on each side bound the support,
  as in torchaudio; phase j needs only the 2·pad + 1 inputs from floor(j·orig/new) on: the other
  taps of torchaudio's dense (new, 2·pad + orig) kernel are the clamped window ends, below 1e-40.
  """
  base = min(orig, new) * rolloff
  pad = math.ceil(width_zeros * orig / base)
  j = np.arange(new)
  start = (orig * j) // new
  k = start[:, None] + np.arange(2 * pad + 1)[None, :]          # index into the padded input
  # torchaudio forms the phase offset j/new in float32 and the rest in float64; the same here
  # keeps the output within float32 rounding of its `Resample` (an exact j/new moves it by up to
  # ~1e-5 at 32 → 44.1 kHz, new = 441).
  phase = (j.astype(np.float32) / np.float32(new)).astype(np.float64)
  t = np.clip(((k - pad) / orig - phase[:, None]) * base, -width_zeros, width_zeros)
  window = np.cos(t * np.pi / (2 * width_zeros)) ** 2
  return (np.sinc(t) * window * (base / orig)).astype(np.float32), start, pad


def reduced_rates(source_rate: int, target_rate: int) -> tuple:
  """(orig, new): the rates divided by their gcd."""
  source_rate, target_rate = int(source_rate), int(target_rate)
  if source_rate <= 0 or target_rate <= 0:
    raise ValueError(f"sample rates must be positive, got {source_rate} → {target_rate}")
  g = math.gcd(source_rate, target_rate)
  return source_rate // g, target_rate // g


def output_length(num_samples: int, source_rate: int, target_rate: int) -> int:
  """ceil(num_samples · target / source): torchaudio's output length."""
  orig, new = reduced_rates(source_rate, target_rate)
  return -(-new * num_samples // orig)


def resample(x: jax.Array, source_rate: int, target_rate: int, *,
             lowpass_filter_width: int = 6, rolloff: float = 0.99) -> jax.Array:
  """Windowed-sinc resampling of (..., samples) inside jit → (..., ceil(samples·new/orig)).

  The rates are static. Polyphase, as one strided convolution: the input, zero-padded by `pad`
  before, is read in blocks of `orig` samples; output j of block m is the dot product of the
  2·pad + 1 inputs from m·orig + start_j on with phase j's taps, i.e. output channel j of a
  convolution with stride `orig` whose kernel j holds phase j's taps at offset start_j (32 →
  16 kHz: one channel of 27 taps). No (…, outputs, taps) window array is formed. Equal to
  `jax_asc.data.audio_io.sinc_resample` (NumPy) to float32 rounding; computed in float32.
  """
  orig, new = reduced_rates(source_rate, target_rate)
  if orig == new:
    return x
  taps, start, pad = sinc_phases(orig, new, int(lowpass_filter_width), float(rolloff))
  n_taps = taps.shape[1]
  width = n_taps + int(start.max())
  kernel = np.zeros((new, 1, width), np.float32)        # (phases, in channels, width)
  for j in range(new):
    kernel[j, 0, start[j]:start[j] + n_taps] = taps[j]
  lead, length = x.shape[:-1], x.shape[-1]
  out_length = -(-new * length // orig)
  blocks = -(-out_length // new)
  right = max(pad + orig, (blocks - 1) * orig + width - pad - length)
  padded = jnp.pad(x.astype(jnp.float32).reshape(-1, 1, length), ((0, 0), (0, 0), (pad, right)))
  y = jax.lax.conv_general_dilated(padded, jnp.asarray(kernel), window_strides=(orig,),
                                   padding="VALID", dimension_numbers=("NCH", "OIH", "NCH"),
                                   precision=jax.lax.Precision.HIGHEST)   # (B, new, ≥ blocks)
  y = jnp.swapaxes(y[:, :, :blocks], 1, 2).reshape(-1, blocks * new)[:, :out_length]
  return y.reshape(*lead, out_length)
