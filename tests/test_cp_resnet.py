"""CP-ResNet teacher: reference parameter and MAC counts, sizes, shapes, init."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_asc.eval import complexity
from jax_asc.models import cp_resnet
from jax_asc.models.cp_resnet import CPResNet


def test_default_matches_reference_counts():
  """d23 `get_model()` defaults at 256×43 (hop 750): 127,684 params, 28,840,396 MACs (torchinfo)."""
  cost = complexity.count(CPResNet(), (1, 256, 43))
  assert (cost.params, cost.macs) == (127_684, 28_840_396)


def _hand_count(base, m=2, cut3=36):
  """Independent count of the rho=8 network: kernels s1 (3,1),(3,3); s2 (3,3); s3 (3,1)."""
  c1, c2, c3 = base, int(base * m), int(base * m * m - cut3)
  bn = lambda c: 2 * c
  total = 25 * c1 + bn(c1)
  total += 9 * c1 * c1 + bn(c1) + c1 * c1 + bn(c1)                      # s1 b1
  total += 9 * c1 * c1 + bn(c1) + 9 * c1 * c1 + bn(c1)                  # s1 b2
  total += 9 * c1 // 2 * c2 + bn(c2) + 9 * c2 // 2 * c2 + bn(c2) + c1 // 2 * c2 + bn(c2)  # s2
  total += 9 * c2 * c3 + bn(c3) + c3 * c3 + bn(c3) + c2 * c3 + bn(c3)   # s3
  return total + 10 * c3 + bn(10)


@pytest.mark.parametrize("base", [32, 64, 128, 256])
def test_sizes_report_002(base):
  """Report 002 studies teachers from ~128 K to several M parameters: base 32 … 256."""
  shapes = jax.eval_shape(lambda x: CPResNet(base_channels=base).init(jax.random.key(0), x),
                          jax.ShapeDtypeStruct((1, 256, 43), jnp.float32))
  n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes["params"]))
  assert n == _hand_count(base) == cp_resnet.expected_params(base_channels=base)
  assert {32: 127_684, 256: 9_732_580}.get(base, n) == n


def test_shapes_features_and_fixup_init():
  model = CPResNet()
  x = jax.random.normal(jax.random.key(0), (2, 256, 43))
  variables = jax.jit(model.init)(jax.random.key(1), x)
  out = jax.jit(functools.partial(model.apply, return_features=True))(variables, x)
  assert out["stem"].shape == (2, 127, 21, 32)
  assert out["s1"].shape == (2, 15, 10, 32)
  assert out["s3"].shape == (2, 15, 10, 92) and out["embedding"].shape == (2, 92)
  params = variables["params"]
  # Fixup: second convolutions and the head start at zero, so the initial logits are 0.
  assert not np.any(params["s1_b1"]["conv2"]["kernel"]) and not np.any(params["head_conv"]["kernel"])
  np.testing.assert_allclose(out["logits"], 0.0)
  std = float(np.std(params["s3_b1"]["conv1"]["kernel"]))
  assert std == pytest.approx((4 ** -0.5) * np.sqrt(2 / (9 * 92)), rel=0.05)
