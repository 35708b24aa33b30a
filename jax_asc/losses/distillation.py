"""Output (logit) distillation: Hinton KD, teacher ensembles and the reports' combined objectives.

All functions are pure and compute in float32 (student logits may be bfloat16/float16).
Shapes: logits (B, C); teacher ensembles (K, B, C); targets are probabilities (B, C).
References: ../shared/reference/methods.md §1 (RepDistiller `KD.py`, fschmid56/cpjku_dcase23).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jax_asc.losses import classification

REDUCTIONS = ("batchmean", "elementwise_mean")


def _reduce(per_example: jax.Array, n_classes: int, reduction: str,
            mask: Optional[jax.Array]) -> jax.Array:
  if reduction not in REDUCTIONS:
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
  if reduction == "elementwise_mean":
    per_example = per_example / n_classes
  return classification.masked_mean(per_example, mask)


def kd_from_log_probs(student_logits: jax.Array, teacher_log_probs: jax.Array,
                      temperature: float, *, reduction: str = "elementwise_mean",
                      mask: Optional[jax.Array] = None) -> jax.Array:
  """τ²·KL(p_t ‖ softmax(z_s/τ)) for teacher log-probabilities already at temperature τ.

  `KL = Σ_c p_t (log p_t − log_softmax(z_s/τ))`, never `log(softmax(·))`.
  reduction: "elementwise_mean" = mean over B×C elements (the DCASE23 reference,
  `KLDivLoss(reduction="none").mean()`, i.e. per-sample KL / C); "batchmean" = per-sample sum
  averaged over the batch (RepDistiller `KD.py`, Hinton et al.).
  """
  log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  log_p_t = teacher_log_probs.astype(jnp.float32)
  p_t = jnp.exp(log_p_t)
  per_example = jnp.sum(jnp.where(p_t > 0, p_t * (log_p_t - log_p_s), 0.0), axis=-1)
  return temperature ** 2 * _reduce(per_example, student_logits.shape[-1], reduction, mask)


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float, *,
            reduction: str = "elementwise_mean", mask: Optional[jax.Array] = None) -> jax.Array:
  """Hinton KD: τ²·KL(softmax(z_t/τ) ‖ softmax(z_s/τ)); see `kd_from_log_probs`."""
  teacher_log_probs = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, -1)
  return kd_from_log_probs(student_logits, teacher_log_probs, temperature, reduction=reduction,
                           mask=mask)


def ensemble_log_probs(teacher_logits: jax.Array, temperature: float,
                       mode: str = "logits") -> jax.Array:
  """Log-probabilities (B, C) at temperature τ of an ensemble of K teachers (K, B, C).

  mode "logits": softmax of the averaged logits (report 000 averages its two teachers' logits;
  CPJKU DCASE22). mode "probabilities": the average of the teachers' softmax outputs (report 001
  averages the softmax of its four teachers; big_vision's summed KL is the same up to a constant).
  """
  z = teacher_logits.astype(jnp.float32) / temperature
  if mode == "logits":
    return jax.nn.log_softmax(jnp.mean(z, axis=0), axis=-1)
  if mode == "probabilities":
    log_p = jax.nn.log_softmax(z, axis=-1)
    return jax.scipy.special.logsumexp(log_p, axis=0) - jnp.log(teacher_logits.shape[0])
  raise ValueError(f"ensemble mode must be 'logits' or 'probabilities', got {mode!r}")


def ce_kd_objective(student_logits, labels, teacher_log_probs, *, kd_weight: float,
                    temperature: float, reduction: str = "elementwise_mean", mask=None):
  """Report 000 eq. 1: (1 − λ)·CE(z_s, y) + λ·τ²·KL (λ = 0.98, τ = 2 in the report).

  The DCASE23 reference writes the same objective with the label weight λ' = 1 − λ = 0.02.
  Returns (loss, {"ce": …, "kd": …}).
  """
  ce = classification.cross_entropy(student_logits, labels, mask=mask)
  kd = kd_from_log_probs(student_logits, teacher_log_probs, temperature, reduction=reduction,
                         mask=mask)
  return (1.0 - kd_weight) * ce + kd_weight * kd, {"ce": ce, "kd": kd}


def joint_kd_objective(soft: jax.Array, feature: jax.Array, ce: jax.Array, *,
                       alpha: float = 1.0, beta: float = 0.1, gamma: float = 0.05):
  """Report 001 eq. 3: α·L_soft + β·L_feat + γ·L_CE (α = 1, β = 0.1, γ = 0.05, T = 2).

  L_soft: `kd_loss` against the teacher ensemble; L_feat: `features.dfm_loss` or
  `features.ssfm_loss`; L_CE: `classification.cross_entropy`. Returns (loss, parts).
  """
  loss = alpha * soft + beta * feature + gamma * ce
  return loss, {"soft": soft, "feature": feature, "ce": ce}


def crd_kd_objective(ce: jax.Array, kd: jax.Array, crd: jax.Array, *, alpha: float = 0.02,
                     beta: float = 0.1):
  """Report 003 eq. 4: α·L_CE + (1 − α)·L_KD + β·L_CRD (α = 0.02, β = 0.1, τ_KD = 2, τ_CRD = 0.07).

  L_CRD: `contrastive.crd_loss` (memory bank) or `contrastive.info_nce_loss`. Returns (loss, parts).
  """
  loss = alpha * ce + (1.0 - alpha) * kd + beta * crd
  return loss, {"ce": ce, "kd": kd, "crd": crd}
