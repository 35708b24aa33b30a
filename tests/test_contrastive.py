"""SupCon, soft SupCon (report 003 eq. 1), InfoNCE and CRD against plain NumPy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_asc.losses import contrastive
from jax_asc.models import heads


def _norm(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _numpy_supcon(features, labels, t, base_t):
  b, v, _ = features.shape
  c = _norm(np.concatenate([features[:, i] for i in range(v)], 0))
  ids = np.tile(labels, v)
  n = len(c)
  logits = c @ c.T / t
  loss = []
  for i in range(n):
    others = [a for a in range(n) if a != i]
    log_den = np.log(np.sum(np.exp(logits[i, others])))
    pos = [p for p in others if ids[p] == ids[i]]
    mlpp = np.mean([logits[i, p] - log_den for p in pos]) if pos else 0.0
    loss.append(-(t / base_t) * mlpp)
  return np.mean(loss)


def _numpy_soft_supcon(z, y, t):
  z = _norm(z)
  s = z @ z.T / t
  w = y @ y.T
  out = []
  for i in range(len(z)):
    others = [k for k in range(len(z)) if k != i]
    num = sum(w[i, k] * np.exp(s[i, k]) for k in others)
    if sum(w[i, k] for k in others) > 0:
      out.append(-np.log(num / sum(np.exp(s[i, m]) for m in others)))
  return np.mean(out), len(out)


def test_supcon_matches_numpy():
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(6, 2, 5))
  labels = np.array([0, 1, 0, 2, 1, 3])   # class 3 has a positive only in its other view
  ours = float(contrastive.supcon_loss(jnp.asarray(feats), jnp.asarray(labels), temperature=0.1))
  assert ours == pytest.approx(_numpy_supcon(feats, labels, 0.1, 0.07), rel=1e-4)
  single = rng.normal(size=(5, 1, 4))   # one view: the lone-class anchors have no positive
  ours = float(contrastive.supcon_loss(jnp.asarray(single), jnp.asarray([0, 0, 1, 2, 2])))
  assert ours == pytest.approx(_numpy_supcon(single, np.array([0, 0, 1, 2, 2]), 0.07, 0.07),
                               rel=1e-4)


def test_soft_supcon_matches_numpy_with_mixup_targets_and_masks_anchors():
  rng = np.random.default_rng(1)
  z = rng.normal(size=(6, 8))
  lam = 0.7
  onehot = np.eye(4)[[0, 1, 2, 0, 3, 1]]
  y = lam * onehot + (1 - lam) * onehot[[1, 0, 3, 2, 5, 4]]
  y[5] = np.eye(4)[3] * 0 + np.array([0, 0, 0, 0])   # an unlabelled anchor: no positives
  loss, count = contrastive.soft_supcon_loss(jnp.asarray(z), jnp.asarray(y), temperature=0.2)
  ref, ref_count = _numpy_soft_supcon(z, y, 0.2)
  assert int(count) == ref_count == 5
  assert float(loss) == pytest.approx(ref, rel=1e-4)
  grad = jax.grad(lambda e: contrastive.soft_supcon_loss(e, jnp.asarray(y))[0])(jnp.asarray(z))
  assert np.all(np.isfinite(grad))


def test_contrastive_losses_stay_finite_at_small_temperature_in_half_precision():
  z = (jax.random.normal(jax.random.key(0), (8, 2, 16)) * 10).astype(jnp.float16)
  labels = jnp.array([0, 1, 0, 1, 2, 2, 3, 3])
  for value in (contrastive.supcon_loss(z, labels, temperature=0.07),
                contrastive.soft_supcon_loss(z[:, 0], jax.nn.one_hot(labels, 4),
                                             temperature=0.07)[0],
                contrastive.info_nce_loss(z[:, 0], z[:, 1], temperature=0.07)):
    assert np.isfinite(float(value))


def test_info_nce_matches_numpy():
  rng = np.random.default_rng(2)
  s, t = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
  logits = _norm(s) @ _norm(t).T / 0.1
  row = -np.mean(np.diag(logits) - np.log(np.exp(logits).sum(1)))
  col = -np.mean(np.diag(logits) - np.log(np.exp(logits).sum(0)))
  ours = contrastive.info_nce_loss(jnp.asarray(s), jnp.asarray(t), temperature=0.1)
  assert float(ours) == pytest.approx((row + col) / 2, rel=1e-5)


def _numpy_crd(mem_s, mem_t, v_s, v_t, cidx, t, n_data):
  def nce(p):
    m = p.shape[1] - 1
    pn = m / n_data
    d1 = np.log(p[:, 0] / (p[:, 0] + pn + 1e-7))
    d0 = np.log(pn / (p[:, 1:] + pn + 1e-7))
    return -(d1.sum() + d0.sum()) / p.shape[0]
  out_s = np.exp(np.einsum("bkd,bd->bk", mem_t[cidx], v_s) / t)
  out_t = np.exp(np.einsum("bkd,bd->bk", mem_s[cidx], v_t) / t)
  z_s, z_t = out_s.mean() * n_data, out_t.mean() * n_data
  return nce(out_s / z_s) + nce(out_t / z_t), z_s


def test_crd_memory_bank_loss_update_and_frozen_z():
  n_data, dim, batch, k = 50, 8, 4, 10
  memory = contrastive.crd_memory_init(jax.random.key(0), n_data, dim)
  assert float(jnp.max(jnp.abs(memory.student))) <= 1 / np.sqrt(dim / 3)
  rng = np.random.default_rng(3)
  v_s, v_t = _norm(rng.normal(size=(batch, dim))), _norm(rng.normal(size=(batch, dim)))
  index = jnp.array([3, 7, 11, 20])
  cidx = contrastive.sample_contrast_indices(jax.random.key(1), index, n_data, k)
  assert cidx.shape == (batch, k + 1) and np.array_equal(cidx[:, 0], index)
  loss, new = contrastive.crd_loss(memory, jnp.asarray(v_s), jnp.asarray(v_t), index, cidx,
                                   temperature=0.07, momentum=0.5)
  ref, z_s = _numpy_crd(np.asarray(memory.student), np.asarray(memory.teacher), v_s, v_t,
                        np.asarray(cidx), 0.07, n_data)
  assert float(loss) == pytest.approx(ref, rel=1e-4)
  assert float(new.z_student) == pytest.approx(z_s, rel=1e-4)
  expected = _norm(0.5 * np.asarray(memory.student)[np.asarray(index)] + 0.5 * v_s)
  np.testing.assert_allclose(new.student[index], expected, atol=1e-6)
  untouched = np.setdiff1d(np.arange(n_data), np.asarray(index))
  np.testing.assert_array_equal(new.student[untouched], memory.student[untouched])
  _, newer = contrastive.crd_loss(new, jnp.asarray(v_s), jnp.asarray(v_t), index, cidx)
  assert float(newer.z_student) == float(new.z_student)   # Z is fixed after the first call
  head = heads.ProjectionHead(16)
  params = head.init(jax.random.key(2), jnp.zeros((2, 5)))
  out = head.apply(params, jnp.ones((2, 5)))
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-6)
