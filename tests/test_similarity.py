"""Linear CKA (biased and debiased), cosine distance and the report 004 eq. 4 objective."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jax_asc.losses import similarity
from jax_asc.models import layers


def _gram_cka(x, y, debiased):
  """Kornblith et al.'s Gram-matrix form with (U-)centring, written plainly."""
  def center(g):
    g = g.copy()
    n = g.shape[0]
    if debiased:
      np.fill_diagonal(g, 0)
      means = g.sum(0) / (n - 2)
      means -= means.sum() / (2 * (n - 1))
      g -= means[:, None] + means[None, :]
      np.fill_diagonal(g, 0)
    else:
      h = np.eye(n) - 1.0 / n
      g = h @ g @ h
    return g
  gx, gy = center(x @ x.T), center(y @ y.T)
  return (gx * gy).sum() / (np.linalg.norm(gx) * np.linalg.norm(gy))


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matches_the_gram_form(debiased):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(20, 7))
  y = x @ rng.normal(size=(7, 5)) + 0.5 * rng.normal(size=(20, 5))
  ours = float(similarity.linear_cka(jnp.asarray(x), jnp.asarray(y), debiased=debiased))
  assert ours == pytest.approx(_gram_cka(x, y, debiased), rel=1e-4)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.1, 10.0), st.booleans())
def test_cka_invariances(seed, scale, debiased):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(16, 6))
  y = rng.normal(size=(16, 4))
  q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  base = float(similarity.linear_cka(jnp.asarray(x), jnp.asarray(y), debiased=debiased))
  moved = float(similarity.linear_cka(jnp.asarray(scale * x @ q), jnp.asarray(y),
                                      debiased=debiased))
  assert moved == pytest.approx(base, abs=1e-4)
  same = float(similarity.linear_cka(jnp.asarray(x), jnp.asarray(x), debiased=debiased))
  assert same == pytest.approx(1.0, abs=1e-5)


def test_cka_gradients_finite_for_constant_features():
  x = jnp.ones((8, 3))
  y = jax.random.normal(jax.random.key(0), (8, 3))
  for debiased in (False, True):
    value, grad = jax.value_and_grad(
        lambda a: similarity.linear_cka(a, y, debiased=debiased))(x)
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad))


def test_minibatch_cka_accumulates_batches():
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(32, 5)), rng.normal(size=(32, 5))
  y[:, :2] += 2 * x[:, :2]
  acc = similarity.cka_accumulator()
  for i in range(4):
    acc = similarity.cka_accumulate(acc, jnp.asarray(x[i * 8:(i + 1) * 8]),
                                    jnp.asarray(y[i * 8:(i + 1) * 8]))
  one = similarity.cka_accumulate(similarity.cka_accumulator(), jnp.asarray(x[:8]),
                                  jnp.asarray(y[:8]))
  assert float(similarity.cka_from_accumulator(one)) == pytest.approx(
      float(similarity.linear_cka(jnp.asarray(x[:8]), jnp.asarray(y[:8]), debiased=True)),
      rel=1e-4)
  assert 0.0 < float(similarity.cka_from_accumulator(acc)) < 1.0


def test_pooling_cosine_and_semantic_objective():
  x = jnp.arange(2 * 10 * 3, dtype=jnp.float32).reshape(2, 10, 3)
  pooled = layers.adaptive_avg_pool_time(x, 4)   # torch bins: [0,3) [2,5) [5,8) [7,10)
  np.testing.assert_allclose(pooled[0, 1], np.asarray(x[0, 2:5]).mean(0))
  np.testing.assert_allclose(pooled[0, 3], np.asarray(x[0, 7:10]).mean(0))
  a = jax.random.normal(jax.random.key(0), (4, 6))
  assert float(similarity.cosine_distance(a, 2 * a)) == pytest.approx(0.0, abs=1e-6)
  assert float(similarity.cosine_distance(a, -a)) == pytest.approx(2.0, abs=1e-6)
  s = jax.random.normal(jax.random.key(1), (2, 50, 8))
  t = jax.random.normal(jax.random.key(2), (2, 40, 8))
  s = layers.adaptive_avg_pool_time(s, 32)
  t = layers.adaptive_avg_pool_time(t, 32)
  loss, parts = similarity.semantic_distillation(jnp.float32(1.0), s, t)
  assert float(loss) == pytest.approx(1.0 + 0.05 * (1 - float(parts["cka"])) +
                                      0.02 * (1 - float(parts["cos"])), rel=1e-6)
  s_bar = np.asarray(s).mean(1)
  t_bar = np.asarray(t).mean(1)
  cos = (s_bar * t_bar).sum(1) / np.linalg.norm(s_bar, axis=1) / np.linalg.norm(t_bar, axis=1)
  assert float(parts["cos"]) == pytest.approx(cos.mean(), rel=1e-5)
  same_loss, same = similarity.semantic_distillation(jnp.float32(1.0), s, s)
  assert float(same["cka"]) == pytest.approx(1.0, abs=1e-5)
  assert float(same_loss) == pytest.approx(1.0, abs=1e-5)
