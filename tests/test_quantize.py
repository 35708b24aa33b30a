"""int8 post-training quantisation of parameters (jax_asc/eval/quantize.py)."""
import jax
import jax.numpy as jnp
import numpy as np

from jax_asc import models
from jax_asc.eval import quantize
from configs import common


def _loop_reference(w):
  """Per output channel (last axis), one channel at a time, written out."""
  out = np.empty_like(w)
  for c in range(w.shape[-1]):
    channel = w[..., c]
    peak = np.abs(channel).max()
    scale = peak / 127 if peak > 0 else 1.0
    out[..., c] = np.clip(np.round(channel / scale), -127, 127) * scale
  return out


def test_per_channel_weights_match_a_loop_and_keep_their_properties():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(3, 3, 4, 6)).astype(np.float32) * np.array([1, 10, 0.01, 1, 1, 3],
                                                                  np.float32)
  w[..., 3] = 0.0   # an all-zero channel stays zero
  q, scale, dequantised = quantize.quantize_tensor(w, per_channel=True)
  np.testing.assert_allclose(dequantised, _loop_reference(w), rtol=1e-6, atol=0)
  assert q.dtype == np.int8 and scale.shape == (1, 1, 1, 6)
  assert np.all(np.abs(q) <= 127) and not np.any(dequantised[..., 3])
  # Each live channel's largest magnitude is a full-scale code; the error is half a step at most.
  assert np.all(np.abs(q[..., [0, 1, 2, 4, 5]]).max(axis=(0, 1, 2)) == 127)
  assert np.all(np.abs(dequantised - w) <= scale / 2 + 1e-7)
  # Quantising a quantised tensor changes nothing.
  np.testing.assert_allclose(quantize.quantize_tensor(dequantised, True)[2], dequantised,
                             rtol=1e-6)
  # Per tensor: one scale.
  _, scale, _ = quantize.quantize_tensor(w, per_channel=False)
  assert scale.shape == () and np.isclose(scale, np.abs(w).max() / 127)


def test_a_students_parameters_all_quantised_and_counted():
  model = models.build(common.cp_mobile("dcase23"), n_classes=10)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 256, 64)))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  quantised, summary = quantize.fake_quantize_int8(params)
  leaves = jax.tree.leaves(params)
  assert summary["params"] == sum(int(np.size(v)) for v in leaves) == 126_952
  kernels = [v for p, v in jax.tree_util.tree_leaves_with_path(params)
             if p[-1].key == "kernel" and v.ndim >= 2]
  others = len(leaves) - len(kernels)
  assert summary["scales"] == sum(int(k.shape[-1]) for k in kernels) + others
  assert jax.tree.structure(quantised) == jax.tree.structure(params)
  for before, after in zip(leaves, jax.tree.leaves(quantised)):
    assert after.dtype == before.dtype and after.shape == before.shape
    step = np.abs(np.asarray(before)).max() / 127
    assert np.abs(np.asarray(after) - np.asarray(before)).max() <= step / 2 + 1e-7
  assert 0 < summary["max_abs_error"]
