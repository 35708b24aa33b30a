"""DFM and SSFM (report 001 eq. 4–5) against plain NumPy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_asc.losses import features
from jax_asc.models import heads


def _numpy_gram(f):
  b, h, w, c = f.shape
  a = f.reshape(b, h * w, c)
  g = np.einsum("bic,bjc->bij", a, a)
  return g / np.maximum(np.linalg.norm(g, axis=-1, keepdims=True), 1e-12)


def test_ssfm_matches_numpy_and_is_zero_for_scaled_copies():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(3, 4, 5, 6)), rng.normal(size=(3, 4, 5, 9))   # channels differ
  ref = np.mean((_numpy_gram(s) - _numpy_gram(t)) ** 2)
  assert float(features.ssfm_loss(jnp.asarray(s), jnp.asarray(t))) == pytest.approx(ref, rel=1e-4)
  assert float(features.ssfm_loss(jnp.asarray(s), jnp.asarray(3.0 * s))) == pytest.approx(
      0.0, abs=1e-7)


def test_dfm_adapter_resize_and_mse():
  rng = np.random.default_rng(1)
  student = jnp.asarray(rng.normal(size=(2, 4, 6, 8)), jnp.float32)
  teacher = jnp.asarray(rng.normal(size=(2, 8, 12, 20)), jnp.float32)
  adapter = heads.FeatureAdapter(8)
  params = adapter.init(jax.random.key(0), teacher)
  adapted = adapter.apply(params, teacher)
  assert adapted.shape == (2, 8, 12, 8)
  loss = features.dfm_loss(student, adapted)
  resized = jax.image.resize(adapted, (2, 4, 6, 8), "linear", antialias=False)
  assert float(loss) == pytest.approx(float(np.mean((student - resized) ** 2)), rel=1e-5)
  grad = jax.grad(lambda p: features.dfm_loss(student, adapter.apply(p, teacher)))(params)
  assert np.all(np.isfinite(grad["params"]["conv"]["kernel"]))
  assert float(features.dfm_loss(student, student)) == 0.0
  with pytest.raises(ValueError, match="equal channels"):
    features.dfm_loss(student, teacher)


def test_ssfm_gradient_finite_with_zero_positions():
  """A ReLU map that is zero at every channel of a position must not give NaN gradients."""
  import jax
  import jax.numpy as jnp
  from jax_asc.losses import features
  student = jnp.ones((2, 3, 4, 5)).at[:, 0, 0, :].set(0.0)
  teacher = jnp.arange(2 * 3 * 4 * 7, dtype=jnp.float32).reshape(2, 3, 4, 7) % 5
  grads = jax.grad(lambda s: features.ssfm_loss(s, teacher))(student)
  assert bool(jnp.all(jnp.isfinite(grads)))
