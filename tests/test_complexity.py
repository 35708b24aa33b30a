"""The MAC counter against XLA's own cost analysis, layer by layer and for the whole model."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from configs import common
from jax_asc import models
from jax_asc.eval import complexity
from jax_asc.models import layers


class _Conv(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Conv(16, (3, 3), (2, 1), padding=((1, 1), (1, 1)), use_bias=True)(x)


class _Dense(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(7)(x)


class _Depthwise(nn.Module):
  @nn.compact
  def __call__(self, x):
    return layers.DepthwiseConv(strides=(1, 2))(x)


class _Pointwise(nn.Module):
  @nn.compact
  def __call__(self, x):
    return layers.PointwiseConv(12)(x)


def _valid_taps(size, kernel, stride, pad):
  """Kernel taps that land inside the input, summed over output positions (one axis)."""
  out = (size + 2 * pad - kernel) // stride + 1
  return sum(sum(0 <= o * stride - pad + k < size for k in range(kernel)) for o in range(out))


# torchinfo counts every output position × kernel size (padding included); XLA's cost analysis
# counts a multiply and an add per MAC but skips taps that fall on the zero padding of a
# convolution, and the bias add is one flop.
_CONV_XLA = 2 * _valid_taps(20, 3, 2, 1) * _valid_taps(10, 3, 1, 1) * 4 * 16 + 16 * 10 * 10


@pytest.mark.parametrize("module,shape,expected_macs,expected_xla_flops", [
    (_Conv(), (1, 20, 10, 4), 3 * 3 * 4 * 16 * 10 * 10 + 16 * 10 * 10, _CONV_XLA),
    (_Dense(), (1, 30), 30 * 7 + 7, 2 * 30 * 7 + 7),
    # shifted multiply-adds on the padded input: 9 multiplies and 8 adds per output.
    (_Depthwise(), (1, 12, 10, 8), 3 * 3 * 8 * 12 * 5, (9 + 8) * 8 * 12 * 5),
    (_Pointwise(), (1, 6, 5, 8), 8 * 12 * 6 * 5, 2 * 8 * 12 * 6 * 5),
])
def test_layer_macs_agree_with_xla_flops(module, shape, expected_macs, expected_xla_flops):
  cost = complexity.count(module, shape)
  assert cost.macs == expected_macs
  variables = module.init(jax.random.key(0), jnp.zeros(shape))
  flops = complexity.xla_flops(module, variables, shape)
  assert flops == pytest.approx(expected_xla_flops, rel=0.01)


def test_whole_model_conv_and_dense_macs_agree_with_xla():
  model = models.build(common.cp_mobile("dcase25"))
  shape = (1, 256, 65)
  cost = complexity.count(model, shape)
  kernel_macs = sum(l.macs for l in cost.layers if "conv" in l.path.split("/")[-1])
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))   # shapes suffice
  flops = complexity.xla_flops(model, variables, shape, train=False)
  # Everything else XLA counts (BatchNorm, ReLU, adds, pooling) is elementwise: a few flops per
  # activation, small beside 2 flops per MAC.
  assert 2 * kernel_macs * 0.95 <= flops <= 2 * kernel_macs * 1.25


def test_limits_verdict_fails_when_too_big():
  cfg = common.cp_mobile("dcase25")
  cfg.update(channels_multiplier=2.3, expansion_rate=3.0)
  cost = complexity.count(models.build(cfg), (1, 256, 65))
  assert cost.params == 126_940 and cost.macs == 53_174_356   # reference table, "not shipped"
  assert "FAIL" in cost.table()
