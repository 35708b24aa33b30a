"""Permutation-invariant CE and KD (report 004), the SD objective and the EMA update."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jax_asc.losses import pit


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _numpy_pit_ce(logits, targets):
  k = logits.shape[1]
  out = []
  for b in range(len(logits)):
    lp = _log_softmax(logits[b])
    out.append(min(np.mean([-lp[p[i], targets[b, i]] for i in range(k)])
                   for p in itertools.permutations(range(k))))
  return np.mean(out)


def _numpy_pi_kd(zs, zt, t):
  k = zs.shape[1]
  out = []
  for b in range(len(zs)):
    ls, lt = _log_softmax(zs[b] / t), _log_softmax(zt[b] / t)
    kl = lambda i, j: t * t * np.sum(np.exp(lt[i]) * (lt[i] - ls[j]))
    out.append(min(np.mean([kl(i, p[i]) for i in range(k)])
                   for p in itertools.permutations(range(k))))
  return np.mean(out)


def test_pit_ce_and_pi_kd_match_numpy():
  rng = np.random.default_rng(0)
  logits, teacher = rng.normal(size=(5, 3, 19)) * 2, rng.normal(size=(5, 3, 19)) * 2
  targets = rng.integers(0, 19, (5, 3))
  ce, best = pit.pit_cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
  assert float(ce) == pytest.approx(_numpy_pit_ce(logits, targets), rel=1e-5)
  assert best.shape == (5,)
  kd, _ = pit.pi_kd_loss(jnp.asarray(logits), jnp.asarray(teacher), temperature=2.0)
  assert float(kd) == pytest.approx(_numpy_pi_kd(logits, teacher, 2.0), rel=1e-5)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(list(itertools.permutations(range(3)))))
def test_invariant_to_permuting_tracks(seed, perm):
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.normal(size=(4, 3, 7)), jnp.float32)
  teacher = jnp.asarray(rng.normal(size=(4, 3, 7)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 7, (4, 3)))
  perm = np.array(perm)
  ce = float(pit.pit_cross_entropy(logits, targets)[0])
  assert float(pit.pit_cross_entropy(logits[:, perm], targets)[0]) == pytest.approx(ce, rel=1e-5)
  assert float(pit.pit_cross_entropy(logits, targets[:, perm])[0]) == pytest.approx(ce, rel=1e-5)
  kd = float(pit.pi_kd_loss(logits, teacher)[0])
  assert float(pit.pi_kd_loss(logits, teacher[:, perm])[0]) == pytest.approx(kd, rel=1e-5)
  assert float(pit.pi_kd_loss(logits, logits[:, perm])[0]) == pytest.approx(0.0, abs=1e-5)


def test_best_permutation_recovers_a_shuffle_and_gradients_are_finite():
  targets = jnp.array([[2, 5, 0]])
  logits = jax.nn.one_hot(targets, 6) * 20.0
  shuffle = np.array([2, 0, 1])
  _, best = pit.pit_cross_entropy(logits[:, shuffle], targets)
  chosen = pit.permutations(3)[int(best[0])]
  assert np.array_equal(shuffle[chosen], [0, 1, 2])   # estimate π(i) is reference i
  grad = jax.grad(lambda z: pit.pi_kd_loss(z, logits, temperature=0.5)[0])(logits * 0.0)
  assert np.all(np.isfinite(grad))


def test_sd_objective_and_ema():
  loss, parts = pit.self_distillation_objective(
      jnp.float32(1.0), [jnp.float32(2.0), jnp.float32(4.0)], jnp.float32(0.5), jnp.float32(3.0),
      aux_weight=0.5, kd_weight=2.0, self_weight=0.1)
  assert float(loss) == pytest.approx(1.0 + 0.5 * 3.0 + 2.0 * 0.5 + 0.1 * 3.0)
  ema = pit.ema_update({"w": jnp.ones(3)}, {"w": jnp.zeros(3)}, 0.999)
  np.testing.assert_allclose(ema["w"], 0.999)
