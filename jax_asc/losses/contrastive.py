"""Contrastive losses: SupCon, the soft (mixup-aware) SupCon of report 003 eq. 1, in-batch InfoNCE,
and CRD (report 003 eq. 3) in the original memory-bank NCE form.

Embeddings are L2-normalised here (cosine similarity, eps-guarded), all in float32: exp(s/0.07)
stays below e^14.3, which overflows float16 but not float32. Batch-wide quantities (similarity
matrices, CRD's Z and memory updates) are over the global batch under `jax.jit` sharding.
References: ../shared/reference/methods.md §2–3 (HobbitLong/SupContrast, RepDistiller `crd/`).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def supcon_loss(features: jax.Array, labels: Optional[jax.Array] = None, *,
                temperature: float = 0.07, base_temperature: float = 0.07) -> jax.Array:
  """SupCon (L_out; contrast mode "all") of features (B, V, D) with V views per clip.

  Every view is an anchor; positives are the other views of the same label (SimCLR when labels
  is None); the denominator holds every other view. Anchors without positives contribute 0
  (the reference's NaN fix). Loss = mean over anchors of −(τ/τ_base)·mean_p log p(i, p).
  """
  b, v, _ = features.shape
  contrast = l2_normalize(jnp.swapaxes(features, 0, 1).reshape(v * b, -1))   # view-major
  ids = jnp.arange(b) if labels is None else labels
  ids = jnp.tile(ids, v)
  n = v * b
  self_mask = jnp.eye(n, dtype=bool)
  logits = jnp.matmul(contrast, contrast.T, precision=_HIGHEST) / temperature
  logits = logits - jax.lax.stop_gradient(jnp.max(logits, axis=1, keepdims=True))
  log_denominator = jax.nn.logsumexp(jnp.where(self_mask, -jnp.inf, logits), axis=1,
                                     keepdims=True)
  log_prob = logits - log_denominator
  positives = (ids[:, None] == ids[None, :]) & ~self_mask
  n_pos = positives.sum(axis=1)
  mean_log_prob = jnp.sum(jnp.where(positives, log_prob, 0.0), axis=1) / jnp.maximum(n_pos, 1)
  return jnp.mean(-(temperature / base_temperature) * mean_log_prob)


def soft_supcon_loss(embeddings: jax.Array, targets: jax.Array, *,
                     temperature: float = 0.2) -> tuple:
  """Mixup-aware soft SupCon (report 003 eq. 1), L_in form.

  L = −(1/|V|) Σ_{i∈V} log( Σ_{k≠i} w_ik e^{s_ik} / Σ_{m≠i} e^{s_im} ),
  s_ik = cos(z_i, z_k)/τ, w_ik = y_i·y_k of the (mixed) label vectors targets (B, C).
  V = anchors with Σ_{k≠i} w_ik > 0: an anchor without any positive would give log 0 and is left
  out (validity mask). Computed as logsumexp(s + log w) − logsumexp(s), never log of a sum.
  Returns (loss, number of valid anchors).
  """
  z = l2_normalize(embeddings)
  s = jnp.matmul(z, z.T, precision=_HIGHEST) / temperature
  t = targets.astype(jnp.float32)
  w = jnp.matmul(t, t.T, precision=_HIGHEST)
  off_diagonal = ~jnp.eye(s.shape[0], dtype=bool)
  w = jnp.where(off_diagonal, w, 0.0)
  valid = jnp.sum(w, axis=1) > 0
  # Invalid rows get log w = 0 so their (discarded) terms stay finite, with finite gradients.
  safe_w = jnp.where(valid[:, None], w, off_diagonal.astype(jnp.float32))
  log_w = jnp.where(safe_w > 0, jnp.log(jnp.where(safe_w > 0, safe_w, 1.0)), -jnp.inf)
  numerator = jax.nn.logsumexp(s + log_w, axis=1)
  denominator = jax.nn.logsumexp(jnp.where(off_diagonal, s, -jnp.inf), axis=1)
  per_anchor = -(numerator - denominator)
  count = jnp.sum(valid)
  loss = jnp.sum(jnp.where(valid, per_anchor, 0.0)) / jnp.maximum(count, 1)
  return loss, count


INFO_NCE_DIRECTIONS = ("symmetric", "student_anchor", "teacher_anchor")


def info_nce_loss(student: jax.Array, teacher: jax.Array, *, temperature: float = 0.07,
                  symmetric: bool = True, direction: str = "") -> jax.Array:
  """In-batch InfoNCE between paired embeddings (B, D): positives on the diagonal, the other
  B−1 clips of the global batch as negatives (the in-batch alternative to CRD's memory bank).

  direction: "student_anchor" (each student embedding against every teacher embedding),
  "teacher_anchor" (each teacher embedding q^T against every student embedding: report 003
  eq. 3, −E log e^{q·k⁺/τ} / (e^{q·k⁺/τ} + Σ e^{q·k⁻/τ})) or "symmetric" (their mean); ""
  keeps the older switch (`symmetric`, else student_anchor).
  """
  direction = direction or ("symmetric" if symmetric else "student_anchor")
  if direction not in INFO_NCE_DIRECTIONS:
    raise ValueError(f"direction must be one of {INFO_NCE_DIRECTIONS}, got {direction!r}")
  s, t = l2_normalize(student), l2_normalize(teacher)
  logits = jnp.matmul(s, t.T, precision=_HIGHEST) / temperature
  diagonal = jnp.arange(s.shape[0])
  s_to_t = -jnp.mean(jax.nn.log_softmax(logits, axis=1)[diagonal, diagonal])
  t_to_s = -jnp.mean(jax.nn.log_softmax(logits, axis=0)[diagonal, diagonal])
  return {"student_anchor": s_to_t, "teacher_anchor": t_to_s,
          "symmetric": 0.5 * (s_to_t + t_to_s)}[direction]


class CRDMemory(NamedTuple):
  """CRD's two memory banks (N_data, D) and their normalising constants Z (−1 until set)."""
  student: jax.Array
  teacher: jax.Array
  z_student: jax.Array
  z_teacher: jax.Array


def crd_memory_init(key: jax.Array, num_data: int, feat_dim: int) -> CRDMemory:
  """U(−stdv, stdv) with stdv = 1/sqrt(feat_dim/3), as RepDistiller's ContrastMemory."""
  stdv = 1.0 / (feat_dim / 3) ** 0.5
  k_s, k_t = jax.random.split(key)
  bank = lambda k: jax.random.uniform(k, (num_data, feat_dim), jnp.float32, -stdv, stdv)
  unset = -jnp.ones((), jnp.float32)
  return CRDMemory(bank(k_s), bank(k_t), unset, unset)


def sample_contrast_indices(key: jax.Array, index: jax.Array, num_data: int,
                            num_negatives: int) -> jax.Array:
  """(B, K+1) memory rows: column 0 the example itself (mode "exact"), then K uniform negatives
  (RepDistiller's AliasMethod with uniform weights)."""
  negatives = jax.random.randint(key, (index.shape[0], num_negatives), 0, num_data)
  return jnp.concatenate([index[:, None], negatives], axis=1)


def nce_loss(probs: jax.Array, num_data: int, eps: float = 1e-7) -> jax.Array:
  """RepDistiller ContrastLoss on P values (B, K+1), column 0 positive, noise Pn = 1/N_data."""
  m = probs.shape[1] - 1
  noise = m / num_data
  log_d1 = jnp.log(probs[:, 0] / (probs[:, 0] + noise + eps))
  log_d0 = jnp.log(noise / (probs[:, 1:] + noise + eps))
  return -(jnp.sum(log_d1) + jnp.sum(log_d0)) / probs.shape[0]


def crd_loss(memory: CRDMemory, student_embed: jax.Array, teacher_embed: jax.Array,
             index: jax.Array, contrast_index: jax.Array, *, temperature: float = 0.07,
             momentum: float = 0.5) -> tuple:
  """CRD in its memory-bank NCE form (report 003 eq. 3; RepDistiller `crd/`).

  student_embed, teacher_embed: (B, feat_dim) outputs of the two projection heads (normalised
  here); index: (B,) dataset indices; contrast_index: (B, K+1) from `sample_contrast_indices`.
  Scores: out_s = exp(teacher_memory[idx]·v_s/τ) (student anchor), out_t = exp(student_memory[idx]
  ·v_t/τ); P = out/Z with Z = mean(out)·N_data fixed on the first call; loss = NCE(P_s) + NCE(P_t).
  The memories (no gradient) are then updated at `index`: m ← normalise(μ·m + (1−μ)·v).
  Returns (loss, new memory): thread the memory through the train state.
  """
  num_data = memory.student.shape[0]
  v_s, v_t = l2_normalize(student_embed), l2_normalize(teacher_embed)
  bank_s = jax.lax.stop_gradient(memory.student[contrast_index])   # (B, K+1, D)
  bank_t = jax.lax.stop_gradient(memory.teacher[contrast_index])
  out_s = jnp.exp(jnp.einsum("bkd,bd->bk", bank_t, v_s, precision=_HIGHEST) / temperature)
  out_t = jnp.exp(jnp.einsum("bkd,bd->bk", bank_s, v_t, precision=_HIGHEST) / temperature)
  z_s = jnp.where(memory.z_student > 0, memory.z_student,
                  jax.lax.stop_gradient(jnp.mean(out_s)) * num_data)
  z_t = jnp.where(memory.z_teacher > 0, memory.z_teacher,
                  jax.lax.stop_gradient(jnp.mean(out_t)) * num_data)
  loss = nce_loss(out_s / z_s, num_data) + nce_loss(out_t / z_t, num_data)

  def update(bank, v):
    mixed = momentum * bank[index] + (1.0 - momentum) * jax.lax.stop_gradient(v)
    return bank.at[index].set(l2_normalize(mixed))

  new_memory = CRDMemory(update(memory.student, v_s), update(memory.teacher, v_t),
                         jax.lax.stop_gradient(z_s), jax.lax.stop_gradient(z_t))
  return loss, new_memory
