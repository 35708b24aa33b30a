"""Cross-entropy against a plain NumPy version and its invariances."""
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from jax_asc.losses import classification


def _numpy_ce(logits, targets):
  z = logits - logits.max(axis=1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  return float(-(targets * logp).sum(axis=1).mean())


_logits = hnp.arrays(np.float32, (4, 5), elements=st.floats(-20, 20, width=32))


@settings(max_examples=30, deadline=None)
@given(_logits, st.lists(st.integers(0, 4), min_size=4, max_size=4), st.floats(0.0, 0.3))
def test_cross_entropy_matches_numpy_with_smoothing(logits, labels, eps):
  labels = np.array(labels)
  targets = (1 - eps) * np.eye(5)[labels] + eps / 5
  ours = float(classification.cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                            label_smoothing=eps))
  assert np.isclose(ours, _numpy_ce(logits.astype(np.float64), targets), rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(_logits, st.floats(-50, 50))
def test_cross_entropy_is_shift_invariant_and_soft_labels_agree(logits, shift):
  labels = jnp.array([0, 1, 2, 3])
  a = classification.cross_entropy(jnp.asarray(logits), labels)
  b = classification.cross_entropy(jnp.asarray(logits) + shift, labels)
  c = classification.cross_entropy(jnp.asarray(logits), jnp.eye(5)[labels])
  assert np.isclose(float(a), float(b), rtol=1e-4, atol=1e-4)
  assert np.isclose(float(a), float(c), rtol=1e-6, atol=1e-6)


def test_mask_excludes_padded_rows():
  logits = jnp.array([[2.0, 0.0], [0.0, 2.0], [9.0, -9.0]])
  labels = jnp.array([0, 1, 1])
  masked = classification.cross_entropy(logits, labels, mask=jnp.array([True, True, False]))
  assert np.isclose(float(masked), float(classification.cross_entropy(logits[:2], labels[:2])))
