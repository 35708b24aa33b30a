"""Report 004's tagging head against a plainly written PyTorch head on the same random weights,
and the 4c input (channel concatenation, spatial-token masking)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jax_asc.models import track_head


def _torch_head(torch, params, stats, x, train, hidden):
  """The head in torch ops: mean → BatchNorm1d(affine=False) → Linear → LN → ReLU → per-track MLP."""
  f = torch.nn.functional
  t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)
  x = t(x).mean(1)
  mean, var = t(stats["token_norm"]["mean"]).clone(), t(stats["token_norm"]["var"]).clone()
  x = f.batch_norm(x, mean, var, training=train, momentum=0.1, eps=1e-5)
  dense = lambda y, p: y @ t(p["kernel"]) + t(p["bias"])
  norm = lambda y, p: f.layer_norm(y, y.shape[-1:], t(p["scale"]), t(p["bias"]), eps=1e-5)
  x = f.relu(norm(dense(x, params["split"]), params["split_norm"]))
  x = x.view(x.shape[0], 3, -1)
  out = []
  for k in range(3):
    y = x[:, k]
    if hidden:
      y = f.relu(norm(dense(y, params[f"track{k}_hidden"]), params[f"track{k}_norm"]))
    out.append(dense(y, params[f"track{k}_out"]))
  return torch.stack(out, 1).numpy(), mean.numpy(), var.numpy()


@pytest.mark.parametrize("hidden,scale", [(512, 1.0), (None, 1.0), (512, 1e-3)])
def test_track_head_matches_torch_on_the_same_weights(hidden, scale):
  """At scale 1e-3 the inputs, running variances and weights are so small that every eps
  (BatchNorm's and LayerNorm's 1e-5) shows in the output."""
  torch = pytest.importorskip("torch", reason="the reference needs PyTorch: make reference-deps")
  head = track_head.TrackHead(track_input_dim=64, track_hidden_dim=hidden and 32)
  rng = np.random.default_rng(0)
  x = (rng.standard_normal((6, 10, 48)) * 2 + 0.5).astype(np.float32) * scale
  variables = head.init(jax.random.PRNGKey(0), x)
  flat = traverse_util.flatten_dict(variables["params"])
  # LayerNorm scales ≠ 1 and biases ≠ 0; everything but the LayerNorm scales times `scale`
  params = traverse_util.unflatten_dict({
      path: ((a + 0.05 * rng.standard_normal(a.shape))
             * (1.0 if path[-1] == "scale" else scale)).astype(np.float32)
      for path, a in flat.items()})
  stats = {"token_norm": {"mean": rng.standard_normal(48).astype(np.float32) * 0.1 * scale,
                          "var": rng.uniform(0.5, 2, 48).astype(np.float32) * scale ** 2}}
  for train in (False, True):
    ours, updated = head.apply({"params": params, "batch_stats": stats}, x, train=train,
                               mutable=["batch_stats"])
    theirs, mean, var = _torch_head(torch, params, stats, x, train, hidden)
    assert ours.shape == (6, 3, 19)
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-4, atol=1e-4 * scale)
    if train:   # the running statistics follow torch's (momentum 0.1, unbiased variance)
      np.testing.assert_allclose(np.asarray(updated["batch_stats"]["token_norm"]["mean"]), mean,
                                 atol=1e-6)
      np.testing.assert_allclose(np.asarray(updated["batch_stats"]["token_norm"]["var"]), var,
                                 rtol=1e-5)


def test_linear_layers_start_as_pytorchs_uniform_init():
  variables = track_head.TrackHead().init(jax.random.PRNGKey(0), jnp.zeros((2, 5, 768)))
  split = variables["params"]["split"]
  bound = 1 / np.sqrt(768)
  for array in (split["kernel"], split["bias"]):
    array = np.asarray(array)
    assert np.abs(array).max() <= bound and np.abs(array).max() > 0.9 * bound


def test_the_1c_head_has_the_references_size():
  head = track_head.TrackHead()
  variables = jax.eval_shape(head.init, jax.random.PRNGKey(0), jnp.zeros((2, 5, 768)))
  assert "token_norm" not in variables["params"]   # affine=False: no scale, no shift
  count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables["params"]))
  # 768→3072 (+LN 3072), 3 × (1024→512, LN 512, 512→19)
  assert count == (768 * 3072 + 3072) + 2 * 3072 + 3 * ((1024 * 512 + 512) + 2 * 512
                                                      + (512 * 19 + 19))


def test_channels_are_concatenated_per_token_and_masked_per_channel_token():
  tokens = jnp.arange(2 * 4 * 5 * 3, dtype=jnp.float32).reshape(2, 4, 5, 3)   # (B, C, N, D)
  joined = track_head.concatenate_channels(tokens)
  assert joined.shape == (2, 5, 12)
  np.testing.assert_array_equal(joined[1, 2].reshape(4, 3), tokens[1, :, 2])
  big = jnp.ones((64, 4, 50, 2))
  masked = track_head.mask_spatial_tokens(jax.random.PRNGKey(1), big, 0.3)
  per_token = np.asarray(masked[..., 0])
  assert np.all(masked[..., 0] == masked[..., 1])           # a whole token, never part of one
  assert abs(1 - per_token.mean() - 0.3) < 0.02               # 30 % of the channel tokens
  assert np.array_equal(np.asarray(track_head.mask_spatial_tokens(jax.random.PRNGKey(1), big,
                                                                  0.0)), np.asarray(big))
  with pytest.raises(ValueError, match=r"in \[0, 1\)"):
    track_head.mask_spatial_tokens(jax.random.PRNGKey(1), big, 1.0)
