"""Feature distillation of report 001: DFM (eq. 4) and SSFM (eq. 5), on NHWC feature maps.

Feature maps are (B, H, W, C) with H = frequency, W = time. When teacher and student grids differ,
the teacher map is resized (bilinear, no antialiasing, like `F.interpolate`) to the student grid.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jax_asc.losses import classification


def resize_to(x: jax.Array, height: int, width: int) -> jax.Array:
  """Bilinear resize of (B, H, W, C) to (B, height, width, C); identity when shapes match."""
  if x.shape[1:3] == (height, width):
    return x
  return jax.image.resize(x.astype(jnp.float32), (x.shape[0], height, width, x.shape[3]),
                          method="linear", antialias=False)


def dfm_loss(student: jax.Array, adapted_teacher: jax.Array, *,
             mask: Optional[jax.Array] = None) -> jax.Array:
  """Direct feature matching: MSE(f_s, Adapter(f_t)) (report 001 eq. 4), mean over elements.

  `adapted_teacher` is the teacher map after the trainable 1×1 adapter
  (`jax_asc.models.heads.FeatureAdapter`) with the student's channel count.
  """
  if student.shape[-1] != adapted_teacher.shape[-1]:
    raise ValueError(f"DFM needs equal channels after the adapter: student {student.shape}, "
                     f"teacher {adapted_teacher.shape}")
  teacher = resize_to(adapted_teacher, student.shape[1], student.shape[2])
  diff = student.astype(jnp.float32) - teacher.astype(jnp.float32)
  return classification.masked_mean(jnp.mean(jnp.square(diff), axis=(1, 2, 3)), mask)


def self_similarity(features: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Per-sample time-frequency self-similarity (B, HW, HW): G = A·Aᵀ of A = (HW, C), rows L2-normalised."""
  b, h, w, c = features.shape
  a = features.astype(jnp.float32).reshape(b, h * w, c)
  gram = jnp.einsum("bic,bjc->bij", a, a, precision=jax.lax.Precision.HIGHEST)
  # The floor sits inside the square root: an all-zero row (a ReLU map that is zero at every
  # channel of a position) would otherwise give sqrt'(0) = inf and a NaN gradient.
  norm = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(gram), axis=-1, keepdims=True), eps * eps))
  return gram / norm


def ssfm_loss(student: jax.Array, teacher: jax.Array, *,
              mask: Optional[jax.Array] = None) -> jax.Array:
  """Self-similarity feature matching ‖G(f_s) − G(f_t)‖² (report 001 eq. 5), mean over elements.

  Works with different channel counts; the teacher is resized to the student's grid first.
  """
  teacher = resize_to(teacher, student.shape[1], student.shape[2])
  diff = self_similarity(student) - self_similarity(teacher)
  return classification.masked_mean(jnp.mean(jnp.square(diff), axis=(1, 2)), mask)
