"""Permutation-invariant tagging losses of report 004 and the EMA teacher update (eq. 1).

The tagger predicts K tracks (K = 3), each a distribution over N event classes plus silence.
Track order is arbitrary, so every loss takes the minimum over the K! track permutations
(6 for K = 3, enumerated statically: no assignment solver inside jit).
Shapes: logits (B, K, C); targets (B, K) class indices or (B, K, C) probabilities.
References: ../shared/reference/methods.md §7 (nttcslab/dcase2026_task4_baseline `label_loss.py`).
"""
from __future__ import annotations

import itertools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_asc.losses import classification


def permutations(k: int) -> np.ndarray:
  """All k! permutations of range(k), (k!, k), in lexicographic order."""
  return np.array(list(itertools.permutations(range(k))), np.int32)


def min_over_permutations(pairwise: jax.Array):
  """pairwise (B, K, K) with [b, i, j] = cost of reference track i vs estimate j →
  (per-example min over π of mean_i cost[b, i, π(i)], best permutation index (B,))."""
  k = pairwise.shape[1]
  perms = permutations(k)                                    # (P, K)
  rows = np.broadcast_to(np.arange(k), perms.shape)
  costs = pairwise[:, rows, perms].mean(axis=-1)             # (B, P)
  best = jnp.argmin(costs, axis=1)
  return jnp.min(costs, axis=1), best


def _targets_as_probs(targets: jax.Array, n_classes: int) -> jax.Array:
  if targets.ndim == 2:
    return jax.nn.one_hot(targets, n_classes, dtype=jnp.float32)
  return targets.astype(jnp.float32)


def pit_cross_entropy(logits: jax.Array, targets: jax.Array, *,
                      mask: Optional[jax.Array] = None) -> tuple:
  """Permutation-invariant cross-entropy (the T4 baseline's label loss).

  C[b,i,j] = CE(logits[b,j], target[b,i]); L_b = min_π (1/K) Σ_i C[b,i,π(i)]; L = mean_b L_b.
  Silence is an ordinary class (pad targets with it). Returns (loss, best permutation (B,):
  an index into `permutations(K)`, estimate π(i) matched to reference i).
  """
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)        # (B, K, C)
  probs = _targets_as_probs(targets, logits.shape[-1])                    # (B, K, C)
  pairwise = -jnp.einsum("bic,bjc->bij", probs, log_p)
  per_example, best = min_over_permutations(pairwise)
  return classification.masked_mean(per_example, mask), best


def pairwise_kd(student_logits: jax.Array, teacher_logits: jax.Array,
                temperature: float) -> jax.Array:
  """D[b,i,j] = T²·KL(softmax(z_t[b,i]/T) ‖ softmax(z_s[b,j]/T)), (B, K, K), float32."""
  log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  log_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
  p_t = jnp.exp(log_t)
  entropy_term = jnp.sum(p_t * log_t, axis=-1)                           # (B, K)
  cross = jnp.einsum("bic,bjc->bij", p_t, log_s)
  return temperature ** 2 * (entropy_term[:, :, None] - cross)


def pi_kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, *,
               temperature: float = 1.0, mask: Optional[jax.Array] = None) -> tuple:
  """Permutation-invariant KD (report 004 eq. 2): min_π T²·KL(σ(z_ema^π/T) ‖ σ(z/T)), the KL
  averaged over the K tracks, then over the batch. Pass the EMA teacher's logits under
  `stop_gradient` when it shares the step. Returns (loss, best permutation (B,))."""
  per_example, best = min_over_permutations(
      pairwise_kd(student_logits, teacher_logits, temperature))
  return classification.masked_mean(per_example, mask), best


def self_distillation(main_logits: jax.Array, aux_logits, temperature: float = 1.5) -> jax.Array:
  """L_self of report 004 eq. 3, which the report names but does not define. Ours: the main
  head teaches the auxiliary heads (deep self-distillation, as in "Be Your Own Teacher", Zhang
  et al. 2019): the mean over the auxiliary heads of the permutation-invariant KD
  min_π T²·KL(σ(sg(z_main)^π/T) ‖ σ(z_aux/T)). Gradients reach only the auxiliary heads and the
  blocks below them. `aux_logits`: {block: (B, K, C)} or a sequence; main_logits (B, K, C)."""
  heads = list(aux_logits.values()) if hasattr(aux_logits, "values") else list(aux_logits)
  if not heads:
    raise ValueError("self-distillation needs at least one auxiliary head")
  teacher = jax.lax.stop_gradient(main_logits)
  return sum(pi_kd_loss(h, teacher, temperature=temperature)[0] for h in heads) / len(heads)


def linear_ramp(step: jax.Array, warmup_steps: int) -> jax.Array:
  """min(1, step / warmup_steps) (1 when warmup_steps ≤ 0): a weight ramped up from 0, e.g.
  the EMA-teacher KD of report 004, whose teacher is the student itself early on."""
  if warmup_steps <= 0:
    return jnp.ones((), jnp.float32)
  return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / float(warmup_steps))


def self_distillation_objective(main: jax.Array, aux: Sequence[jax.Array], kd: jax.Array,
                                self_loss: jax.Array, *, aux_weight: float, kd_weight: float,
                                self_weight: float):
  """Report 004 eq. 3: L_main + γ·L_aux + α·L_KD + α_self·L_self.

  `aux`: the permutation-invariant losses of the auxiliary (deep-supervision) heads, averaged into
  L_aux. Returns (loss, parts)."""
  aux_loss = jnp.mean(jnp.stack(list(aux))) if len(aux) else jnp.zeros((), jnp.float32)
  loss = main + aux_weight * aux_loss + kd_weight * kd + self_weight * self_loss
  return loss, {"main": main, "aux": aux_loss, "kd": kd, "self": self_loss}


def ema_update(ema_params, params, momentum: float):
  """Report 004 eq. 1: θ_ema ← m·θ_ema + (1 − m)·θ_student (m = 0.999 typical)."""
  return jax.tree.map(lambda e, p: momentum * e + (1.0 - momentum) * p.astype(e.dtype),
                      ema_params, params)
