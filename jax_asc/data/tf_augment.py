"""The waveform augmentations of `jax_asc.audio.augment` for tf.data (host-side pipelines).

Same cores with the same explicit parameters (tests check they agree with the JAX versions);
the parameters are drawn with TF's stateless random ops from a (2,) int seed, so a pipeline that
derives the seed from (run seed, step) is deterministic and resumable.
"""
from __future__ import annotations

import tensorflow as tf


def roll_by(x: tf.Tensor, shifts: tf.Tensor) -> tf.Tensor:
  n = tf.shape(x)[-1]
  source = tf.math.floormod(tf.range(n)[None, :] - tf.cast(shifts, tf.int32)[:, None], n)
  return tf.gather(x, source, batch_dims=1)


def gain_by(x: tf.Tensor, gains_db: tf.Tensor) -> tf.Tensor:
  return x * tf.cast(10.0 ** (gains_db / 20.0), x.dtype)[:, None]


def convolve_truncated(x: tf.Tensor, irs: tf.Tensor) -> tf.Tensor:
  """`scipy.signal.convolve(x, ir, 'full')[:N]` row by row via FFT: x (B, N), irs (B, L)."""
  n = x.shape[-1]
  full = n + irs.shape[-1] - 1
  size = 1 << (full - 1).bit_length()
  spectrum = (tf.signal.rfft(tf.cast(x, tf.float32), [size]) *
              tf.signal.rfft(tf.cast(irs, tf.float32), [size]))
  return tf.cast(tf.signal.irfft(spectrum, [size])[:, :n], x.dtype)


def augment_batch(batch: dict, seed: tf.Tensor, *, max_shift: int = 0, max_gain_db: float = 0.0,
                  irs: tf.Tensor | None = None, dir_prob: float = 0.0,
                  dir_device_ids=()) -> dict:
  """DIR → time roll → gain on `batch["waveform"]` (B, N), the d23 order; seed: (2,) int32."""
  x = batch["waveform"]
  b = tf.shape(x)[0]
  seeds = tf.random.experimental.stateless_split(seed, 4)
  if irs is not None and dir_prob > 0:
    choice = tf.random.stateless_uniform([b], seeds[0], 0, irs.shape[0], dtype=tf.int32)
    apply = tf.random.stateless_uniform([b], seeds[1]) < dir_prob
    if dir_device_ids:
      devices = tf.cast(batch["recording_device"], tf.int32)[:, None]
      apply &= tf.reduce_any(devices == tf.constant(dir_device_ids, tf.int32)[None, :], 1)
    x = tf.where(apply[:, None], convolve_truncated(x, tf.gather(irs, choice)), x)
  if max_shift > 0:
    shifts = tf.random.stateless_uniform([b], seeds[2], -max_shift, max_shift + 1, dtype=tf.int32)
    x = roll_by(x, shifts)
  if max_gain_db > 0:
    x = gain_by(x, tf.random.stateless_uniform([b], seeds[3], -max_gain_db, max_gain_db))
  return dict(batch, waveform=x)
