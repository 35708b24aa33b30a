"""CP-Mobile: the reference parameter and MAC counts, features, heads, and the fast layers."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from configs import common
from jax_asc import models
from jax_asc.eval import complexity
from jax_asc.models import layers


@pytest.mark.parametrize("variant,shape,params,macs", [
    ("dcase25", (1, 256, 65), 61_148, 29_419_156),
    ("dcase23", (1, 256, 64), 126_952, 28_893_268),
    ("dcase23", (1, 256, 65), 126_952, 31_684_180),
])
def test_reference_parameter_and_mac_counts(variant, shape, params, macs):
  cost = complexity.count(models.build(common.cp_mobile(variant)), shape)
  assert cost.params == params
  assert cost.macs == macs


def test_dcase25_fits_the_challenge_limits_in_float16_only():
  cost = complexity.count(models.build(common.cp_mobile("dcase25")), (1, 256, 65))
  assert cost.param_bytes("float16") == 122_296
  assert cost.within_dcase_limits("float16")
  assert not cost.within_dcase_limits("float32")
  table = cost.table("float16")
  assert "PASS" in table and "61,148" in table and "b6/project/conv" in table


def test_stage_shapes_and_embedding():
  model = models.build(common.cp_mobile("dcase25"))
  x = jnp.zeros((2, 256, 65))
  variables = model.init(jax.random.key(0), x)
  feats = model.apply(variables, x, return_features=True)
  assert feats["stem"].shape == (2, 64, 17, 32)
  assert feats["s1"].shape == (2, 64, 9, 32)
  assert feats["s2"].shape == (2, 32, 9, 56)
  assert feats["s3"].shape == (2, 32, 9, 104)
  assert feats["embedding"].shape == (2, 104)
  assert feats["logits"].shape == (2, 10)
  np.testing.assert_allclose(feats["logits"], model.apply(variables, x), atol=1e-6)


def test_cosine_head_and_layer_norm_variant():
  cfg = common.cp_mobile("dcase25")
  cfg.update(head="cosine", cosine_scale=16.0, norm="layer")
  model = models.build(cfg)
  x = jax.random.normal(jax.random.key(1), (3, 64, 33))
  variables = model.init(jax.random.key(0), x)
  assert "batch_stats" not in variables
  logits = model.apply(variables, x)
  assert logits.shape == (3, 10)
  assert np.all(np.abs(np.asarray(logits)) <= 16.0 + 1e-4)   # |γ·cos| ≤ γ


def test_model_build_rejects_unknown_settings():
  cfg = common.cp_mobile("dcase25")
  with pytest.raises(ValueError, match="base_channel"):
    models.build(cfg, base_channel=3)


def _reference_depthwise(x, kernel, strides):
  return lax.conv_general_dilated(x, kernel, strides, ((1, 1), (1, 1)),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  feature_group_count=x.shape[-1],
                                  precision=lax.Precision.HIGHEST)


@pytest.mark.parametrize("strides", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_depthwise_matches_grouped_conv_forward_and_gradients(strides):
  x = jax.random.normal(jax.random.key(0), (2, 9, 7, 6))
  layer = layers.DepthwiseConv(strides=strides)
  params = layer.init(jax.random.key(1), x)
  kernel = params["params"]["kernel"]
  assert kernel.shape == (3, 3, 1, 6)   # the shape of nn.Conv(feature_group_count=6)
  ours = layer.apply(params, x)
  ref = _reference_depthwise(x, kernel, strides)
  np.testing.assert_allclose(ours, ref, atol=1e-5)
  loss_ours = lambda k, x: jnp.sum(jnp.sin(layer.apply({"params": {"kernel": k}}, x)))
  loss_ref = lambda k, x: jnp.sum(jnp.sin(_reference_depthwise(x, k, strides)))
  for a, b in zip(jax.grad(loss_ours, (0, 1))(kernel, x), jax.grad(loss_ref, (0, 1))(kernel, x)):
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_pointwise_matches_1x1_conv_and_shares_its_parameters():
  x = jax.random.normal(jax.random.key(0), (2, 5, 4, 6))
  conv = nn.Conv(8, (1, 1), use_bias=False)
  params = conv.init(jax.random.key(1), x)
  ours = layers.PointwiseConv(8).apply(params, x)   # nn.Conv's parameters load unchanged
  np.testing.assert_allclose(ours, conv.apply(params, x), atol=1e-5)
  g_ours = jax.grad(lambda p: jnp.sum(layers.PointwiseConv(8).apply(p, x) ** 2))(params)
  g_ref = jax.grad(lambda p: jnp.sum(conv.apply(p, x) ** 2))(params)
  np.testing.assert_allclose(g_ours["params"]["kernel"], g_ref["params"]["kernel"], rtol=1e-4)


def test_grn_is_identity_at_init_and_matches_formula():
  x = jax.random.normal(jax.random.key(0), (2, 4, 3, 5))
  grn = layers.GRN()
  params = grn.init(jax.random.key(0), x)
  np.testing.assert_allclose(grn.apply(params, x), x)
  params = {"params": {"gamma": jnp.array([0.5]), "beta": jnp.array([0.1])}}
  xn = np.asarray(x)
  gx = np.sqrt((xn ** 2).sum(axis=(1, 2), keepdims=True))
  nx = gx / (gx.mean(axis=-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(grn.apply(params, x), 0.5 * xn * nx + 0.1 + xn, atol=1e-5)


def test_make_divisible_and_channels():
  assert layers.make_divisible(32 * 1.8) == 56 and layers.make_divisible(32 * 1.8 ** 2) == 104
  assert layers.make_divisible(32 * 2.3 ** 2) == 168
  assert models.build(common.cp_mobile("dcase23")).stage_channels() == [32, 32, 72, 168]
