"""Representation similarity losses: linear CKA, cosine distance, and report 004 eq. 4.

CKA (Kornblith et al. 2019; debiased form Nguyen et al. 2021), computed in float32 in feature
space (no n×n Gram matrices), over the rows of the global batch.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def _hsic(x, y, debiased: bool):
  """‖YᵀX‖²_F of centred X, Y, or its debiased estimate (HSIC_1 up to a constant factor)."""
  dot = jnp.sum(jnp.square(jnp.matmul(y.T, x, precision=_HIGHEST)))
  if not debiased:
    return dot
  n = x.shape[0]
  rows_x, rows_y = jnp.sum(x * x, axis=1), jnp.sum(y * y, axis=1)
  return (dot - n / (n - 2) * jnp.dot(rows_x, rows_y, precision=_HIGHEST)
          + jnp.sum(rows_x) * jnp.sum(rows_y) / ((n - 1) * (n - 2)))


def linear_cka(x: jax.Array, y: jax.Array, *, debiased: bool = False,
               eps: float = 1e-8) -> jax.Array:
  """Linear CKA of x (n, p) and y (n, q) (rows = examples): a scalar in [0, 1] (biased).

  Biased: ‖YᵀX‖² / (‖XᵀX‖ ‖YᵀY‖) of column-centred X, Y. Debiased (n ≥ 4): the U-statistic
  HSIC estimates; the self-terms are clamped at 0 before the square root. Invariant to orthogonal
  transforms and isotropic scaling of either input; 1 for identical inputs.
  """
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"CKA needs the same number of rows: {x.shape} vs {y.shape}")
  if debiased and x.shape[0] < 4:
    raise ValueError(f"debiased CKA needs at least 4 rows, got {x.shape[0]}")
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  x = x - jnp.mean(x, axis=0, keepdims=True)
  y = y - jnp.mean(y, axis=0, keepdims=True)
  xy = _hsic(x, y, debiased)
  # Clamped away from 0 so constant (dead) features give CKA 0 with finite gradients.
  xx = jnp.maximum(_hsic(x, x, debiased), 1e-30)
  yy = jnp.maximum(_hsic(y, y, debiased), 1e-30)
  return xy / (jnp.sqrt(xx) * jnp.sqrt(yy) + eps)


class CKAAccumulator(NamedTuple):
  """Minibatch CKA (Nguyen et al. 2021): debiased HSIC summed over minibatches."""
  xy: jax.Array
  xx: jax.Array
  yy: jax.Array


def cka_accumulator() -> CKAAccumulator:
  zero = jnp.zeros((), jnp.float32)
  return CKAAccumulator(zero, zero, zero)


def cka_accumulate(acc: CKAAccumulator, x: jax.Array, y: jax.Array) -> CKAAccumulator:
  """Adds one minibatch (n ≥ 4 rows) to the debiased minibatch-CKA sums."""
  x = x.astype(jnp.float32) - jnp.mean(x.astype(jnp.float32), axis=0, keepdims=True)
  y = y.astype(jnp.float32) - jnp.mean(y.astype(jnp.float32), axis=0, keepdims=True)
  n = x.shape[0]
  scale = 1.0 / (n * (n - 3))   # HSIC_1 normalisation: the batches are weighted alike
  return CKAAccumulator(acc.xy + scale * _hsic(x, y, True), acc.xx + scale * _hsic(x, x, True),
                        acc.yy + scale * _hsic(y, y, True))


def cka_from_accumulator(acc: CKAAccumulator, eps: float = 1e-12) -> jax.Array:
  return acc.xy / (jnp.sqrt(jnp.maximum(acc.xx, 0.0) * jnp.maximum(acc.yy, 0.0)) + eps)


def cosine_distance(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Mean over rows of 1 − cos(a_i, b_i); a, b (B, D)."""
  a = a.astype(jnp.float32)
  b = b.astype(jnp.float32)
  cos = jnp.sum(a * b, axis=-1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1) + eps)
  return jnp.mean(1.0 - cos)


def semantic_similarities(student: jax.Array, teacher: jax.Array, *, debiased: bool = False):
  """(CKA(S, T), mean cos(S̄, T̄)) of report 004 eq. 4 on pooled sequences.

  student, teacher: (B, bins, D) token sequences already pooled to the same time bins (report
  004: 32) and, for the student, projected to the teacher's width D. CKA treats the B·bins
  pooled tokens as examples (with the report's batches of 4–64 clips, clip-level CKA would see
  too few rows); S̄, T̄ are the clip means over the bins.
  """
  if student.shape != teacher.shape:
    raise ValueError(f"semantic distillation needs equal (B, bins, D) shapes: student "
                     f"{student.shape}, teacher {teacher.shape}")
  width = student.shape[-1]
  cka = linear_cka(student.reshape(-1, width), teacher.reshape(-1, width), debiased=debiased)
  cos = 1.0 - cosine_distance(student.mean(axis=1), teacher.mean(axis=1))
  return cka, cos


def semantic_distillation(task_loss: jax.Array, student: jax.Array, teacher: jax.Array, *,
                          cka_weight: float = 0.05, cos_weight: float = 0.02,
                          debiased: bool = False):
  """Report 004 eq. 4: L_task + λ_CKA·(1 − CKA(S, T)) + λ_cos·(1 − cos(S̄, T̄)) on pooled
  (B, bins, D) sequences (`semantic_similarities`). Weights (0.05, 0.02) for 1c, (0.02, 0.01)
  for 4c in the report. Returns (loss, {"task", "cka", "cos"})."""
  cka, cos = semantic_similarities(student, teacher, debiased=debiased)
  loss = task_loss + cka_weight * (1.0 - cka) + cos_weight * (1.0 - cos)
  return loss, {"task": task_loss, "cka": cka, "cos": cos}
