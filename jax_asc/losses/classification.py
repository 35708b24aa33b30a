"""Classification losses: pure functions of logits and targets, computed in float32."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0,
                  mask: jax.Array | None = None) -> jax.Array:
  """Mean cross-entropy over the (masked) batch.

  Args:
    logits: (B, C).
    labels: (B,) integer classes (hard labels), or (B, C) probabilities (soft labels, e.g. mixup
      targets `λ·y + (1−λ)·y[perm]`).
    label_smoothing: ε; targets become (1−ε)·y + ε/C.
    mask: optional (B,) bool/float weights; padded rows (False) do not count.
  Returns:
    Scalar float32 loss.
  """
  logits = logits.astype(jnp.float32)
  n_classes = logits.shape[-1]
  if labels.ndim == logits.ndim - 1:
    targets = jax.nn.one_hot(labels, n_classes, dtype=jnp.float32)
  else:
    targets = labels.astype(jnp.float32)
  if label_smoothing:
    targets = (1.0 - label_smoothing) * targets + label_smoothing / n_classes
  per_example = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)
  return masked_mean(per_example, mask)


def masked_mean(per_example: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
  """The mean of (B,) per-example losses over the examples where `mask` (B,) is True (all when
  None; padded evaluation rows are False): every loss of the library reduces with it."""
  if mask is None:
    return jnp.mean(per_example)
  weights = mask.astype(jnp.float32)
  return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)
