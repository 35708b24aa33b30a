"""DCSL / GDAL (report 000 eq. 3–4) against plain NumPy, invariances and edge cases."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from jax_asc.losses import dafa


def _numpy_dafa(x, d, eps=1e-6):
  devices = sorted(set(d.tolist()))
  mu_g = x.mean(0)
  s_w = sum(((x[d == k] - x[d == k].mean(0)) ** 2).sum() for k in devices) / len(x)
  s_b = sum((d == k).sum() * ((x[d == k].mean(0) - mu_g) ** 2).sum() for k in devices) / len(x)
  gdal = np.mean([((x[d == k].mean(0) - mu_g) ** 2).sum() for k in devices])
  dcsl = s_w / (s_b + eps) if len(devices) >= 2 else 0.0
  return dcsl, gdal


_x = hnp.arrays(np.float64, (12, 5), elements=st.floats(-5, 5))
_d = hnp.arrays(np.int32, (12,), elements=st.integers(0, 5))


@settings(max_examples=30, deadline=None)
@given(_x, _d)
def test_matches_numpy(x, d):
  dcsl_ref, gdal_ref = _numpy_dafa(x, d)
  dcsl = float(dafa.dcsl_loss(jnp.asarray(x, jnp.float32), jnp.asarray(d), 6))
  gdal = float(dafa.gdal_loss(jnp.asarray(x, jnp.float32), jnp.asarray(d), 6))
  assert gdal == pytest.approx(gdal_ref, rel=1e-4, abs=1e-5)
  assert dcsl == pytest.approx(dcsl_ref, rel=2e-3, abs=1e-4)


@settings(max_examples=30, deadline=None)
@given(_x, _d, hnp.arrays(np.float64, (5,), elements=st.floats(-100, 100)))
def test_translation_invariance(x, d, shift):
  a = jnp.asarray(x, jnp.float32)
  b = jnp.asarray(x + shift, jnp.float32)
  for fn in (dafa.dcsl_loss, dafa.gdal_loss):
    ref = float(fn(a, jnp.asarray(d), 6))
    assert float(fn(b, jnp.asarray(d), 6)) == pytest.approx(ref, rel=5e-3, abs=5e-3)


def test_edge_cases_are_finite_with_finite_gradients():
  x = jax.random.normal(jax.random.key(0), (6, 4))
  cases = {
      "one device": jnp.zeros(6, jnp.int32),
      "singleton device": jnp.array([0, 0, 0, 0, 0, 1]),
      "all singletons": jnp.arange(6),
  }
  for name, d in cases.items():
    for fn in (dafa.dcsl_loss, dafa.gdal_loss):
      value, grad = jax.value_and_grad(lambda x: fn(x, d, 6))(x)
      assert np.isfinite(float(value)) and np.all(np.isfinite(grad)), name
  assert float(dafa.dcsl_loss(x, cases["one device"], 6)) == 0.0
  assert float(dafa.gdal_loss(x, cases["one device"], 6)) == pytest.approx(0.0, abs=1e-6)
  assert float(dafa.dcsl_loss(x, cases["all singletons"], 6)) == pytest.approx(0.0, abs=1e-6)


def test_mask_drops_padded_rows_and_objective_weights():
  x = jax.random.normal(jax.random.key(1), (8, 3))
  d = jnp.array([0, 1, 2, 0, 1, 2, 3, 3])
  mask = jnp.array([True] * 6 + [False] * 2)
  np.testing.assert_allclose(dafa.dcsl_loss(x, d, 4, mask=mask), dafa.dcsl_loss(x[:6], d[:6], 4),
                             rtol=1e-5)
  loss, parts = dafa.dafa_objective(jnp.float32(2.0), x, d, 4)
  assert float(loss) == pytest.approx(2.0 + 0.01 * float(parts["dcsl"]) +
                                      0.01 * float(parts["gdal"]), rel=1e-6)
