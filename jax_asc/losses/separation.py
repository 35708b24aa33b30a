"""Separation losses of report 004's label-queried separator (ResUNetK): SNR and class-aware
permutation-invariant −SNR.

The separator is queried with the labels of a mixture's K tracks (K = 3, silence padding the
empty ones) and returns one waveform per query, so an estimate may only be matched to a
reference of its own label. References: ../shared/reference/methods.md §7 (the T4 baseline's
`class_aware_pit.py`) and §8 (its SNR: torchmetrics' `signal_noise_ratio`, not scale-invariant,
no zero-mean).
Shapes: estimates and references (B, K, T) or (B, K, C, T) (C channels are averaged); labels
(B, K) int class of each reference track (the query of each estimate), `silence` for an empty
track. The reference marks silence by an all-zero label vector: convert such vectors with
`where(any, argmax, silence)`, never a plain argmax (which makes silence class 0). Float32
throughout. Where permutations tie, `min` shares the gradient among them (PyTorch's gives it to
the first); the loss is the same.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jax_asc.losses import classification, pit

INVALID = 1e9   # the cost of an estimate matched to a reference of another label


def snr_db(estimate: jax.Array, reference: jax.Array) -> jax.Array:
  """SNR (dB) over the last axis: 10·log10((Σ r² + ε) / (Σ (r − e)² + ε)), ε = float32 eps.

  Not scale-invariant and no mean removed (torchmetrics' `signal_noise_ratio`)."""
  estimate, reference = estimate.astype(jnp.float32), reference.astype(jnp.float32)
  eps = jnp.finfo(jnp.float32).eps
  signal = jnp.sum(reference ** 2, axis=-1)
  noise = jnp.sum((reference - estimate) ** 2, axis=-1)
  return 10.0 * jnp.log10((signal + eps) / (noise + eps))


def class_aware_pairwise_cost(estimates: jax.Array, references: jax.Array, labels: jax.Array,
                              silence: int) -> jax.Array:
  """(B, K, K) cost of reference track i matched to estimate j: −SNR (averaged over channels)
  when both are the same non-silence label; 0 for a silent reference i with its own estimate
  (silent tracks are not permuted and cost nothing); `INVALID` otherwise."""
  k = labels.shape[1]
  negative_snr = -snr_db(estimates[:, None], references[:, :, None])   # (B, K, K[, C])
  negative_snr = negative_snr.reshape(negative_snr.shape[:3] + (-1,)).mean(axis=-1)
  is_silence = labels == silence                                          # (B, K)
  either_silent = is_silence[:, :, None] | is_silence[:, None, :]
  same_label = labels[:, :, None] == labels[:, None, :]
  silent_self = jnp.eye(k, dtype=bool)[None] & is_silence[:, :, None]
  return jnp.where(same_label & ~either_silent, negative_snr,
                   jnp.where(silent_self, 0.0, INVALID))


def class_aware_pit_snr(estimates: jax.Array, references: jax.Array, labels: jax.Array, *,
                        silence: int, mask: Optional[jax.Array] = None) -> tuple:
  """The separator's loss (T4 `class_aware_pit.py`): per example, the minimum over the K!
  permutations π of (1/K) Σ_i cost[i, π(i)] (`class_aware_pairwise_cost`), then the mean over
  the batch (over `mask`'s examples). The identity is always allowed (each estimate was queried
  with its reference's label), so the minimum is finite. Returns (loss, best permutation (B,):
  an index into `pit.permutations(K)`)."""
  per_example, best = pit.min_over_permutations(
      class_aware_pairwise_cost(estimates, references, labels, silence))
  return classification.masked_mean(per_example, mask), best
