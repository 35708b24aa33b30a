"""The fast layers against XLA's own operations, forward and gradients (jax_asc/models/fast_ops.py,
jax_asc/native), and their parameters against the plain Flax layers they replace."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_asc import native
from jax_asc.audio import frontends
from jax_asc.models import fast_ops, layers

# Where a C++ compiler exists the kernels must build and be used (a failed build fails these
# tests instead of silently comparing XLA's forms with themselves); without one, or with
# JAX_ASC_KERNELS=xla, the tests that need the kernels skip and the rest check XLA's forms.
NATIVE_EXPECTED = native.compiler() is not None and native.requested_mode() != "xla"
needs_native = pytest.mark.skipif(
    not NATIVE_EXPECTED, reason="no C++ compiler ($CXX or c++), or JAX_ASC_KERNELS=xla: the "
    "native kernels are not built here")


def _check_form(target, fn, *args, native_shape=True):
  """`fn` lowers to the native kernel `target` exactly when it is expected for this shape."""
  text = jax.jit(fn).lower(*args).as_text()
  want = NATIVE_EXPECTED and native_shape
  assert (f"@{target}(" in text) == want, (
      f"expected the {'native' if want else 'XLA'} form; kernels: {native.status().reason}")


def _random(key, shape, scale=1.0):
  """Standard normal float32 samples (NumPy's generator: no program to compile per shape)."""
  return np.float32(scale) * np.random.default_rng(key).standard_normal(shape, np.float32)


def _grads(fn, x, kernel, cotangent):
  return jax.grad(lambda x, k: jnp.sum(fn(x, k) * cotangent), argnums=(0, 1))(x, kernel)


def _close(a, b, rtol=1e-5, atol=1e-5):
  scale = max(float(np.max(np.abs(np.asarray(b)))), 1.0)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol * scale)


@pytest.mark.parametrize("shape,kernel_size,strides", [
    ((3, 9, 7, 16), (3, 3), (1, 1)), ((2, 8, 9, 20), (3, 3), (1, 2)),
    ((2, 9, 8, 35), (3, 3), (2, 1)), ((4, 6, 6, 16), (3, 3), (2, 2)),
    ((2, 7, 9, 12), (5, 5), (1, 1)), ((2, 5, 4, 3), (3, 1), (1, 1)),
    ((2, 3, 2, 17), (3, 3), (1, 1)), ((2, 2, 3, 33), (3, 3), (2, 2)),
    ((2, 1, 1, 16), (3, 3), (1, 2)), ((3, 7, 5, 120), (3, 3), (1, 2))])
def test_depthwise_matches_grouped_convolution(shape, kernel_size, strides):
  """Every form (native, shifted slices, the layer) = `lax.conv_general_dilated` with
  feature_group_count = C: output, input and kernel gradients; channels beyond whole vectors of
  16 (the 3×3 fast paths' overlapping last vector), fewer than 16 (the general kernels), odd
  sizes, images narrower than the kernel (no interior columns), every stride of CP-Mobile, and
  a 5×5 kernel."""
  x = _random(0, shape)
  kernel = _random(1, (*kernel_size, 1, shape[-1]))
  reference = jax.jit(lambda x, k: fast_ops.depthwise_conv_xla(x, k, strides))
  y = reference(x, kernel)
  cotangent = _random(2, y.shape)
  ref_grads = jax.jit(lambda x, k: _grads(reference, x, k, cotangent))(x, kernel)
  forms = {"shifts": lambda x, k: fast_ops.depthwise_conv_shifts(x, k, strides),
           "dispatch": lambda x, k: fast_ops.depthwise_conv(x, k, strides)}
  _check_form("jax_asc_depthwise_input_grad",
              lambda x, k: _grads(forms["dispatch"], x, k, cotangent), x, kernel)
  for name, fn in forms.items():
    _close(jax.jit(fn)(x, kernel), y)
    for ours, ref in zip(jax.jit(lambda x, k: _grads(fn, x, k, cotangent))(x, kernel), ref_grads):
      _close(ours, ref)


@needs_native
def test_native_kernels_are_used_deterministic_and_match_the_xla_forms():
  x = _random(3, (8, 12, 10, 40))
  kernel = _random(4, (3, 3, 1, 40))
  fn = jax.jit(jax.value_and_grad(
      lambda x, k: jnp.sum(jnp.sin(fast_ops.depthwise_conv(x, k, (2, 1)))), argnums=(0, 1)))
  assert "jax_asc_depthwise" in fn.lower(x, kernel).as_text()
  first, second = fn(x, kernel), fn(x, kernel)
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
    np.testing.assert_array_equal(a, b)   # fixed reduction order, whatever the threads did
  with native.disabled():
    xla = jax.jit(jax.value_and_grad(
        lambda x, k: jnp.sum(jnp.sin(fast_ops.depthwise_conv(x, k, (2, 1)))), argnums=(0, 1)))
    assert "jax_asc_depthwise" not in xla.lower(x, kernel).as_text()
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(xla(x, kernel))):
      _close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape,kernel_shape,strides", [
    ((2, 16, 13, 1), (3, 3, 1, 8), (2, 2)), ((2, 9, 7, 8), (3, 3, 8, 32), (2, 2)),
    ((3, 8, 8, 5), (3, 3, 5, 20), (1, 1)), ((2, 8, 9, 3), (5, 3, 3, 7), (2, 1)),
    ((2, 7, 1, 3), (3, 3, 3, 16), (1, 2)), ((3, 5, 6, 9), (3, 3, 9, 48), (2, 1)),
    ((2, 6, 5, 2), (3, 3, 2, 64), (1, 1)), ((2, 8, 10, 16), (3, 3, 16, 20), (1, 2)),
    ((1, 7, 6, 8), (3, 3, 8, 12), (1, 1))])
def test_small_convolution_matches_xla(shape, kernel_shape, strides):
  """Output and both gradients against XLA's convolution: the CP-Mobile stems (1 → 8 and
  8 → 32 channels, stride 2), output channels of every fast path (8, 16, 32, 48, 64) at every
  stride, input channels beyond a register block (9), a one-column image, and the general
  kernels (20 and 7 output channels, a 5×3 kernel); the native input gradient (3×3, input
  channels in whole 8-float vectors, odd and even sizes at every stride) where it applies."""
  x = _random(5, shape)
  kernel = _random(6, kernel_shape, 0.3)
  reference = lambda x, k: fast_ops.conv_xla(x, k, strides)
  y = jax.jit(reference)(x, kernel)
  cotangent = _random(7, y.shape)
  fn = lambda x, k: fast_ops.conv(x, k, strides)
  _check_form("jax_asc_conv_kernel_grad", lambda x, k: _grads(fn, x, k, cotangent), x, kernel)
  _check_form("jax_asc_conv_input_grad", lambda x, k: _grads(fn, x, k, cotangent), x, kernel,
              native_shape=kernel_shape[:2] == (3, 3) and kernel_shape[2] % 8 == 0)
  _close(jax.jit(fn)(x, kernel), y)
  for ours, ref in zip(jax.jit(lambda x, k: _grads(fn, x, k, cotangent))(x, kernel),
                       jax.jit(lambda x, k: _grads(reference, x, k, cotangent))(x, kernel)):
    _close(ours, ref)


@pytest.mark.parametrize("n,k,m", [(5000, 32, 64), (777, 120, 56), (3, 5, 17), (64, 8, 33),
                                   (1000, 13, 16), (130, 9, 40), (50, 104, 10)])
def test_matmul_and_its_weight_gradient(n, k, m):
  x, kernel = _random(8, (n, k)), _random(9, (k, m))
  cotangent = _random(10, (n, m))
  _check_form("jax_asc_matmul_tn", fast_ops.matmul_tn, x, cotangent)
  _close(jax.jit(fast_ops.matmul)(x, kernel), x @ kernel)
  _close(jax.jit(fast_ops.matmul_tn)(x, cotangent),
         np.asarray(x, np.float64).T @ np.asarray(cotangent, np.float64))
  ours = jax.jit(lambda x, w: _grads(fast_ops.matmul, x, w, cotangent))(x, kernel)
  ref = jax.jit(lambda x, w: _grads(
      lambda x, w: jnp.dot(x, w, precision=jax.lax.Precision.HIGHEST), x, w, cotangent))(
          x, kernel)
  for a, b in zip(ours, ref):
    _close(a, b)


def _reference_bn(x, scale, bias, relu, eps=1e-5):
  mean = jnp.mean(x, axis=(0, 1, 2))
  var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
  y = (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias
  return (jax.nn.relu(y) if relu else y), mean, var


@pytest.mark.parametrize("relu", [True, False])
def test_batch_norm_forward_statistics_and_gradients(relu):
  # A large mean beside the spread (unnormalised log-mels): the one-pass shortcut would fail.
  x = _random(11, (6, 5, 7, 24), 0.5) - 10.0
  scale, bias = _random(12, (24,)) + 1.0, _random(13, (24,))
  cotangent = _random(14, x.shape)
  ours = jax.jit(lambda x, s, b: fast_ops.batch_norm(x, s, b, relu=relu))(x, scale, bias)
  ref = jax.jit(_reference_bn, static_argnums=3)(x, scale, bias, relu)
  for a, b in zip(ours, ref):
    _close(a, b, rtol=1e-4, atol=1e-5)

  # Gradients of the output and of the statistics (they feed the running averages).
  def total(fn):
    def f(x, s, b):
      y, mean, var = fn(x, s, b)
      return jnp.sum(y * cotangent) + 0.3 * jnp.sum(mean) + 0.7 * jnp.sum(var)
    return jax.grad(f, argnums=(0, 1, 2))
  ours = jax.jit(total(lambda x, s, b: fast_ops.batch_norm(x, s, b, relu=relu)))(x, scale, bias)
  ref = jax.jit(total(lambda x, s, b: _reference_bn(x, s, b, relu)))(x, scale, bias)
  for a, b in zip(ours, ref):
    _close(a, b, rtol=1e-4, atol=1e-4)


def _assert_same_results(fast, plain, variables, x):
  """The same outputs, running statistics and parameter gradients in training, and the same
  evaluation outputs, from the same variables."""
  def run(module):
    def loss(params):
      y, updates = module.apply(dict(variables, params=params), x, train=True,
                                mutable=["batch_stats"])
      return jnp.sum(jnp.sin(y)), (y, updates)
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  (_, (y_fast, stats_fast)), g_fast = run(fast)
  (_, (y_plain, stats_plain)), g_plain = run(plain)
  _close(y_fast, y_plain, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(stats_fast), jax.tree.leaves(stats_plain)):
    _close(a, b, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain)):
    _close(a, b, rtol=1e-3, atol=1e-4)
  evaluate = lambda module: jax.jit(lambda v: module.apply(v, x, train=False))(variables)
  _close(evaluate(fast), evaluate(plain), rtol=1e-4, atol=1e-5)


class _PlainConvNormAct(nn.Module):
  """The plain Flax layers the fast ConvNormAct replaces (the pre-speed-work definition)."""
  features: int
  kernel_size: tuple
  strides: tuple
  depthwise: bool
  activation: bool = True

  @nn.compact
  def __call__(self, x, train):
    groups = x.shape[-1] if self.depthwise else 1
    features = x.shape[-1] if self.depthwise else self.features
    pads = [((k - 1) // 2, (k - 1) // 2) for k in self.kernel_size]
    x = nn.Conv(features, self.kernel_size, self.strides, padding=pads, use_bias=False,
                feature_group_count=groups, name="conv")(x)
    x = _PlainBatchNorm(use_running_average=not train, name="norm")(x)
    return nn.relu(x) if self.activation else x


class _PlainBatchNorm(nn.Module):
  """torch.nn.BatchNorm2d written out (momentum 0.1, eps 1e-5; the running variance averages
  the unbiased batch variance), with `nn.BatchNorm`'s variable names."""
  use_running_average: bool

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    mean_v = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    var_v = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    if self.use_running_average:
      return (x - mean_v.value) / jnp.sqrt(var_v.value + 1e-5) * scale + bias
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    var = jnp.mean(jnp.square(x - mean), axes)
    if not self.is_initializing():
      n = x.size // c
      mean_v.value = 0.9 * mean_v.value + 0.1 * mean
      var_v.value = 0.9 * var_v.value + 0.1 * var * n / (n - 1)
    return (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias


@pytest.mark.parametrize("features,kernel_size,strides,depthwise", [
    (24, (3, 3), (2, 2), False), (24, (1, 1), (1, 1), False), (16, (3, 3), (1, 2), True)])
def test_conv_norm_act_keeps_the_plain_layers_variables_and_results(features, kernel_size,
                                                                    strides, depthwise):
  """Checkpoints move between the fast and plain layers: same variable names and shapes, and
  the same outputs, running statistics and parameter gradients from the same variables."""
  x = _random(15, (4, 10, 9, 16))
  fast = layers.ConvNormAct(features, kernel_size, strides, depthwise=depthwise)
  plain = _PlainConvNormAct(features, kernel_size, strides, depthwise)
  variables = jax.jit(lambda k: plain.init(k, x, train=False))(jax.random.key(0))
  fast_vars = jax.eval_shape(lambda k: fast.init(k, x, train=False), jax.random.key(0))
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, fast_vars)

  _assert_same_results(fast, plain, variables, x)


@pytest.mark.parametrize("shape,kernel_size,strides", [
    ((3, 9, 7, 16), (3, 3), (1, 1)), ((2, 8, 9, 20), (3, 3), (1, 2)),
    ((2, 9, 8, 35), (3, 3), (2, 1)), ((4, 6, 6, 64), (3, 3), (2, 2)),
    ((2, 7, 9, 12), (5, 5), (1, 1)), ((2, 2, 3, 33), (3, 3), (1, 1))])
def test_affine_relu_depthwise_matches_the_unfused_operations(shape, kernel_size, strides):
  """The norm-apply + ReLU fused into the depthwise convolution = the two done one after the
  other by XLA: output and the gradients of x, center, a, b and the kernel (the backward pass
  one native kernel; 3×3 fast paths,
  every stride, the overlapping last vector, fewer than 16 channels, a 5×5 kernel)."""
  x = _random(30, shape, 0.5) + 3.0          # a mean away from zero: the centred sums matter
  c = shape[-1]
  center = x.mean(axis=(0, 1, 2)) + _random(31, (c,), 0.05)
  a, b = _random(32, (c,)) + 1.0, _random(33, (c,), 0.5)   # some of each sign: ReLU masks
  kernel = _random(34, (*kernel_size, 1, c))
  fused = lambda *args: fast_ops.affine_relu_depthwise(*args, strides)
  unfused = lambda *args: fast_ops.affine_relu_depthwise_xla(*args, strides)
  y = jax.jit(unfused)(x, center, a, b, kernel)
  _check_form("jax_asc_affine_relu_depthwise_forward", fused, x, center, a, b, kernel)
  _close(jax.jit(fused)(x, center, a, b, kernel), y)
  cotangent = _random(35, y.shape)

  def grads(fn):
    return jax.grad(lambda *args: jnp.sum(fn(*args) * cotangent), argnums=(0, 1, 2, 3, 4))
  ref = jax.jit(grads(unfused))(x, center, a, b, kernel)
  # Both gradients and the norm's sums in one native pass.
  _check_form("jax_asc_affine_relu_depthwise_backward", grads(fused), x, center, a, b, kernel)
  for ours, want in zip(jax.jit(grads(fused))(x, center, a, b, kernel), ref):
    _close(ours, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,kernel_size,strides", [
    ((3, 9, 7, 16), (3, 3), (1, 1)), ((2, 9, 8, 35), (3, 3), (2, 1)),
    ((2, 7, 9, 12), (5, 5), (1, 1))])
def test_affine_relu_depthwise_moments_match_the_unfused_operations(shape, kernel_size, strides):
  """The norm-fused depthwise convolution with its output's batch statistics taken in the same
  pass = the convolution, then `moments`: y, mean, var and the gradients of all five inputs
  (the statistics' share added to dy inside the native backward pass)."""
  x = _random(36, shape, 0.5) + 3.0
  c = shape[-1]
  center = x.mean(axis=(0, 1, 2)) + _random(37, (c,), 0.05)
  a, b = _random(38, (c,)) + 1.0, _random(39, (c,), 0.5)
  kernel = _random(40, (*kernel_size, 1, c)) + 0.2   # outputs with a mean away from zero
  fused = lambda *args: fast_ops.affine_relu_depthwise_moments(*args, strides)

  def unfused(*args):
    y = fast_ops.affine_relu_depthwise_xla(*args, strides)
    return y, jnp.mean(y, (0, 1, 2)), jnp.var(y, (0, 1, 2))
  _check_form("jax_asc_affine_relu_depthwise_moments_forward", fused, x, center, a, b, kernel)
  want = jax.jit(unfused)(x, center, a, b, kernel)
  for ours, ref in zip(jax.jit(fused)(x, center, a, b, kernel), want):
    _close(ours, ref, rtol=1e-4, atol=1e-5)
  weights = (_random(41, want[0].shape), _random(42, (c,)), _random(43, (c,)))

  def grads(fn):
    loss = lambda *args: sum(jnp.sum(o * w) for o, w in zip(fn(*args), weights))
    return jax.grad(loss, argnums=(0, 1, 2, 3, 4))
  _check_form("jax_asc_affine_relu_depthwise_moments_backward", grads(fused), x, center, a, b,
              kernel)
  for ours, ref in zip(jax.jit(grads(fused))(x, center, a, b, kernel),
                       jax.jit(grads(unfused))(x, center, a, b, kernel)):
    _close(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n,k,m", [(100, 24, 40), (300, 64, 56), (37, 5, 20), (50, 16, 10),
                                   (9, 120, 104)])
def test_affine_relu_matmul_matches_the_unfused_operations(n, k, m):
  """The norm-apply + ReLU fused into the 1×1 convolution = the two done one after the other:
  output and gradients of x, center, a, b, kernel; rows not a whole number of tiles, fewer
  than 8 input channels (the tiled weight gradient), fewer than 16 outputs (XLA's form)."""
  x = _random(40, (n, k), 0.5) + 3.0
  center = x.mean(axis=0) + _random(41, (k,), 0.05)
  a, b = _random(42, (k,)) + 1.0, _random(43, (k,), 0.5)
  kernel = _random(44, (k, m))
  unfused = lambda x, c, a, b, w: jnp.dot(fast_ops.affine_relu(x, c, a, b), w,
                                          precision=jax.lax.Precision.HIGHEST)
  y = jax.jit(unfused)(x, center, a, b, kernel)
  _check_form("jax_asc_affine_relu_matmul", fast_ops.affine_relu_matmul, x, center, a, b,
              kernel, native_shape=m >= 16)
  _close(jax.jit(fast_ops.affine_relu_matmul)(x, center, a, b, kernel), y, rtol=1e-4)
  cotangent = _random(45, y.shape)

  def grads(fn):
    return jax.grad(lambda *args: jnp.sum(fn(*args) * cotangent), argnums=(0, 1, 2, 3, 4))
  ref = jax.jit(grads(unfused))(x, center, a, b, kernel)
  for ours, want in zip(jax.jit(grads(fast_ops.affine_relu_matmul))(x, center, a, b, kernel),
                        ref):
    _close(ours, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n,k,m", [(300, 64, 56), (37, 5, 20), (50, 16, 10), (9, 120, 104),
                                   (1001, 120, 56)])
def test_affine_relu_matmul_moments_match_the_unfused_operations(n, k, m):
  """The 1×1 convolution with its output's batch statistics summed in the same pass = the
  matmul, then `moments`: y, mean, var and the gradients of all five inputs (the backward pass
  one native kernel from 16 input channels); widths that are not a multiple of 16 (the last
  vector overlaps), partial tiles and runs, several chunks, fewer than 16 outputs."""
  x = _random(50, (n, k), 0.5) + 3.0
  center = x.mean(axis=0) + _random(51, (k,), 0.05)
  a, b = _random(52, (k,)) + 1.0, _random(53, (k,), 0.5)
  kernel = _random(54, (k, m)) + 0.3   # outputs with a mean well away from zero

  def unfused(x, c, a, b, w):
    y = jnp.dot(fast_ops.affine_relu(x, c, a, b), w, precision=jax.lax.Precision.HIGHEST)
    return y, jnp.mean(y, 0), jnp.var(y, 0)
  _check_form("jax_asc_affine_relu_matmul_moments", fast_ops.affine_relu_matmul_moments, x,
              center, a, b, kernel, native_shape=m >= 16)
  fused = jax.jit(fast_ops.affine_relu_matmul_moments)
  for ours, want in zip(fused(x, center, a, b, kernel),
                        jax.jit(unfused)(x, center, a, b, kernel)):
    _close(ours, want, rtol=1e-4, atol=1e-4)
  weights = (_random(55, (n, m)), _random(56, (m,)), _random(57, (m,)))

  def grads(fn):
    loss = lambda *args: sum(jnp.sum(o * w) for o, w in zip(fn(*args), weights))
    return jax.grad(loss, argnums=(0, 1, 2, 3, 4))
  ref = jax.jit(grads(unfused))(x, center, a, b, kernel)
  # The backward pass in one native pass from 16 input channels.
  _check_form("jax_asc_affine_relu_matmul_moments_backward",
              grads(fast_ops.affine_relu_matmul_moments), x, center, a, b, kernel,
              native_shape=m >= 16 and k >= 16)
  for ours, want in zip(jax.jit(grads(fast_ops.affine_relu_matmul_moments))(
      x, center, a, b, kernel), ref):
    _close(ours, want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("n,k,m", [(300, 32, 64), (37, 5, 20), (50, 16, 10), (1003, 56, 120),
                                   (41, 16, 20)])
def test_matmul_moments_match_the_unfused_operations(n, k, m):
  """x·kernel with the output's batch statistics in the same pass = `matmul`, then `moments`;
  its backward pass (the statistics' share, dx and the kernel gradient in one native pass from
  16 input channels) = the gradients of the unfused operations: rows not a whole number of
  tiles or runs, several chunks, widths not a multiple of the vector."""
  x, kernel = _random(64, (n, k), 0.5) + 1.0, _random(65, (k, m)) + 0.3

  def unfused(x, w):
    y = jnp.dot(x, w, precision=jax.lax.Precision.HIGHEST)
    return y, jnp.mean(y, 0), jnp.var(y, 0)
  _check_form("jax_asc_matmul_moments", fast_ops.matmul_moments, x, kernel,
              native_shape=m >= 16)
  for ours, want in zip(jax.jit(fast_ops.matmul_moments)(x, kernel),
                        jax.jit(unfused)(x, kernel)):
    _close(ours, want, rtol=1e-4, atol=1e-4)
  weights = (_random(66, (n, m)), _random(67, (m,)), _random(68, (m,)))

  def grads(fn):
    loss = lambda *args: sum(jnp.sum(o * w) for o, w in zip(fn(*args), weights))
    return jax.grad(loss, argnums=(0, 1))
  _check_form("jax_asc_matmul_moments_backward", grads(fast_ops.matmul_moments), x, kernel,
              native_shape=m >= 16 and k >= 16)
  for ours, want in zip(jax.jit(grads(fast_ops.matmul_moments))(x, kernel),
                        jax.jit(grads(unfused))(x, kernel)):
    _close(ours, want, rtol=1e-4, atol=1e-3)


@needs_native
def test_matmul_moments_backward_names_bad_shapes():
  """The fused backward kernel refuses inputs narrower than its vector width with an error that
  names it, rather than reading past a row."""
  x, w = jnp.ones((10, 4), jnp.float32), jnp.ones((4, 32), jnp.float32)
  y = jnp.ones((10, 32), jnp.float32)
  stat = jnp.ones((32,), jnp.float32)
  call = jax.ffi.ffi_call("jax_asc_matmul_moments_backward",
                          (jax.ShapeDtypeStruct(x.shape, jnp.float32),
                           jax.ShapeDtypeStruct(w.shape, jnp.float32)))
  native.available()   # builds and registers the kernels
  with pytest.raises(Exception, match="matmul_moments backward"):
    jax.block_until_ready(jax.jit(call)(x, w, y, y, stat, stat, stat))


@pytest.mark.parametrize("relu", [False, True])
def test_normalize_with_given_statistics_matches_batch_norm(relu):
  """`normalize` fed by `moments` = `batch_norm`: output and gradients of x, scale, bias."""
  x = _random(58, (6, 5, 7, 24), 0.5) - 2.0
  scale, bias = _random(59, (24,)) + 1.0, _random(60, (24,), 0.3)

  def split(x, scale, bias):
    mean, var = fast_ops.moments(x.reshape(-1, 24))
    return fast_ops.normalize(x, mean, var, scale, bias, relu=relu), mean, var
  whole = lambda x, scale, bias: fast_ops.batch_norm(x, scale, bias, relu=relu)
  for ours, want in zip(jax.jit(split)(x, scale, bias), jax.jit(whole)(x, scale, bias)):
    _close(ours, want, rtol=1e-4, atol=1e-5)
  weights = (_random(61, x.shape), _random(62, (24,)), _random(63, (24,)))

  def grads(fn):
    loss = lambda *args: sum(jnp.sum(o * w) for o, w in zip(fn(*args), weights))
    return jax.grad(loss, argnums=(0, 1, 2))
  for ours, want in zip(jax.jit(grads(split))(x, scale, bias),
                        jax.jit(grads(whole))(x, scale, bias)):
    _close(ours, want, rtol=1e-4, atol=1e-4)


def test_moments_and_their_gradient():
  x = _random(36, (200, 24), 0.5) - 10.0
  mean, var = jax.jit(fast_ops.moments)(x)
  reference = lambda x: (jnp.mean(x, 0), jnp.var(x, 0))
  want_mean, want_var = jax.jit(reference)(x)
  _close(mean, want_mean)
  _close(var, want_var, rtol=1e-4, atol=1e-6)
  f = lambda fn: jax.grad(lambda x: jnp.sum(jnp.stack(fn(x)) * jnp.array([[0.3], [0.7]])))
  _close(jax.jit(f(fast_ops.moments))(x), jax.jit(f(reference))(x), rtol=1e-4, atol=1e-5)


class _PlainExpandDepthwise(nn.Module):
  """1×1 conv → BN → ReLU → depthwise 3×3 → BN → ReLU → 1×1 conv → BN from the plain layers."""
  strides: tuple

  @nn.compact
  def __call__(self, x, train):
    x = _PlainConvNormAct(48, (1, 1), (1, 1), False, name="expand")(x, train)
    x = _PlainConvNormAct(48, (3, 3), self.strides, True, name="depthwise")(x, train)
    return _PlainConvNormAct(24, (1, 1), (1, 1), False, False, name="project")(x, train)


class _FastExpandDepthwise(nn.Module):
  strides: tuple

  @nn.compact
  def __call__(self, x, train):
    x = layers.ConvNormAct(48, (1, 1), defer_norm=True, name="expand")(x, train)
    x = layers.ConvNormAct(48, (3, 3), self.strides, depthwise=True, defer_norm=True,
                           name="depthwise")(x, train)
    return layers.ConvNormAct(24, (1, 1), activation=False, name="project")(x, train)


@pytest.mark.parametrize("strides", [(1, 1), (2, 1)])
def test_deferred_norm_into_the_depthwise_layer_matches_the_plain_layers(strides):
  """CP-Mobile's expansion → depthwise → projection with each norm fused into the next layer's
  pass: the same variables, outputs, running statistics and parameter gradients as the plain
  layers."""
  x = _random(37, (4, 10, 9, 16))
  fast, plain = _FastExpandDepthwise(strides), _PlainExpandDepthwise(strides)
  variables = jax.jit(lambda k: plain.init(k, x, train=False))(jax.random.key(0))
  assert (jax.tree.map(jnp.shape, jax.eval_shape(lambda k: fast.init(k, x, train=False),
                                                 jax.random.key(0)))
          == jax.tree.map(jnp.shape, variables))

  _assert_same_results(fast, plain, variables, x)


@pytest.mark.parametrize("preset,samples", [(p, 16000) for p in sorted(frontends.PRESETS)]
                         + [("dcase23", 4000), ("dcase25", 1500)])
def test_native_mel_spectrogram_matches_the_xla_frontend(preset, samples):
  """Every preset; short clips too: 9 frames, so a block of 16 frames spans clips and all reach
  into the padding, and 1500 samples, shorter than the reflected padding (padded by XLA)."""
  settings = frontends.PRESETS[preset]
  waveform = _random(16, (5, samples), 0.1)
  aug = frontends.FrontendAugment(fmin_aug_range=10, fmax_aug_range=1000, freq_mask=8)
  key = jax.random.key(3)
  evaluate = jax.jit(lambda w: frontends.log_mel(w, settings))
  train = jax.jit(lambda w, k: frontends.log_mel(w, settings, key=k, aug=aug))
  _check_form("jax_asc_mel_spectrogram", lambda w: frontends.log_mel(w, settings), waveform,
              native_shape=frontends.native_mel_supported(settings))
  ours_eval, ours_train = evaluate(waveform), train(waveform, key)
  with native.disabled():
    ref_eval = jax.jit(lambda w: frontends.log_mel(w, settings))(waveform)
    ref_train = jax.jit(lambda w, k: frontends.log_mel(w, settings, key=k, aug=aug))(waveform, key)
  # Log-mel features agree to float32 rounding of the power (1e-4 in the log domain).
  np.testing.assert_allclose(ours_eval, ref_eval, atol=2e-4)
  np.testing.assert_allclose(ours_train, ref_train, atol=2e-4)


def test_band_supports_cover_every_jittered_filterbank():
  settings = frontends.DCASE23
  lo, hi = frontends.band_supports(settings, 10, 1000)
  for fmin in (0.0, 9.0):
    for fmax in (15000.0, 15500.0, 16000.0):
      bank = np.asarray(frontends.mel_filterbank(settings, fmin=fmin, fmax=fmax))
      rows = np.arange(bank.shape[0])[:, None]
      outside = (rows < lo[None, :]) | (rows >= hi[None, :])
      assert not np.any(bank[outside] > 0), (fmin, fmax)
