"""Hinton KD and teacher ensembles against plain NumPy and their properties."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from jax_asc.losses import distillation


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _numpy_kd(zs, zt, t, reduction):
  ps, pt = _softmax(zs / t), _softmax(zt / t)
  kl = (pt * (np.log(pt) - np.log(ps))).sum(-1)
  per = kl / zs.shape[-1] if reduction == "elementwise_mean" else kl
  return t * t * per.mean()


_logits = hnp.arrays(np.float64, (6, 10), elements=st.floats(-8, 8))


@settings(max_examples=25, deadline=None)
@given(_logits, _logits, st.sampled_from([1.0, 2.0, 4.0]),
       st.sampled_from(["elementwise_mean", "batchmean"]))
def test_kd_matches_numpy_and_is_non_negative(zs, zt, t, reduction):
  ours = float(distillation.kd_loss(jnp.asarray(zs, jnp.float32), jnp.asarray(zt, jnp.float32), t,
                                    reduction=reduction))
  assert ours == pytest.approx(_numpy_kd(zs, zt, t, reduction), rel=1e-4, abs=1e-5)
  assert ours >= -1e-6


@settings(max_examples=25, deadline=None)
@given(_logits, st.floats(-30, 30))
def test_kd_is_zero_for_identical_and_shifted_logits(z, shift):
  z = jnp.asarray(z, jnp.float32)
  assert abs(float(distillation.kd_loss(z, z + shift, 2.0, reduction="batchmean"))) < 1e-4


def test_kd_is_finite_at_small_temperature_in_half_precision():
  z = jax.random.normal(jax.random.key(0), (4, 10)) * 30
  loss = distillation.kd_loss(z.astype(jnp.float16), (z * 0.5).astype(jnp.bfloat16), 0.07)
  grad = jax.grad(lambda s: distillation.kd_loss(s, z * 0.5, 0.07))(z.astype(jnp.float16))
  assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_ensembles_average_logits_or_probabilities():
  zt = np.random.default_rng(0).normal(size=(3, 5, 10)) * 3
  by_logits = np.exp(np.asarray(distillation.ensemble_log_probs(jnp.asarray(zt), 2.0, "logits")))
  np.testing.assert_allclose(by_logits, _softmax(zt.mean(0) / 2.0), rtol=1e-5)
  by_probs = np.exp(np.asarray(
      distillation.ensemble_log_probs(jnp.asarray(zt), 2.0, "probabilities")))
  np.testing.assert_allclose(by_probs, _softmax(zt / 2.0).mean(0), rtol=1e-5)
  with pytest.raises(ValueError, match="median"):
    distillation.ensemble_log_probs(jnp.asarray(zt), 1.0, "median")


def test_report000_objective_weights():
  rng = np.random.default_rng(1)
  zs, zt = rng.normal(size=(8, 10)), rng.normal(size=(8, 10))
  labels = rng.integers(0, 10, 8)
  teacher = distillation.ensemble_log_probs(jnp.asarray(zt[None]), 2.0)
  loss, parts = distillation.ce_kd_objective(jnp.asarray(zs), jnp.asarray(labels), teacher,
                                             kd_weight=0.98, temperature=2.0)
  ce = -np.log(_softmax(zs)[np.arange(8), labels]).mean()
  kd = _numpy_kd(zs, zt, 2.0, "elementwise_mean")
  assert float(parts["ce"]) == pytest.approx(ce, rel=1e-5)
  assert float(loss) == pytest.approx(0.02 * ce + 0.98 * kd, rel=1e-5)
