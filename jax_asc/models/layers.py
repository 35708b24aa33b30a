"""Building blocks shared by the CNN students and teachers (NHWC: batch, freq, time, channels).

The layers keep the parameter names and shapes of the plain Flax layers, so checkpoints move
freely between them: `DepthwiseConv` and `PointwiseConv` those of `nn.Conv(feature_group_count=C)`
and a 1×1 `nn.Conv` (`kernel` (kh, kw, 1, C) and (1, 1, Cin, Cout)), `BatchNorm` those of
`nn.BatchNorm` (`scale`, `bias`; `batch_stats` `mean`, `var`). They compute with the fast
operations of `fast_ops` (native depthwise kernels on CPU, a written-out batch-norm gradient with
the ReLU fused, 1×1 convolutions as 2-D matmuls, and in training a batch norm + ReLU deferred into
the depthwise or 1×1 convolution that follows it, `DeferredNorm`).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

import numpy as np

from jax_asc.models import fast_ops

# PyTorch `kaiming_normal_(mode="fan_out")`: gain √2, untruncated normal, fan_out = out·kh·kw.
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class DeferredNorm(NamedTuple):
  """A batch norm and ReLU not yet applied, relu((x − center)·a + b), for the next layer to fuse
  into its own pass (`DepthwiseConv` does). x (..., C) float32; center (the batch mean), a
  (scale / √(var + ε)) and b (the norm's bias): (C,)."""
  x: jax.Array
  center: jax.Array
  a: jax.Array
  b: jax.Array

  def apply(self) -> jax.Array:
    return fast_ops.affine_relu(*self)


class WithMoments(NamedTuple):
  """A layer's output y (..., C) float32 with its batch mean and biased variance over every axis
  but the last (C,), taken by the layer that produced y (`PointwiseConv` with `moments`), for
  the `BatchNorm` that follows."""
  y: jax.Array
  mean: jax.Array
  var: jax.Array


class DepthwiseConv(nn.Module):
  """Depthwise k×k convolution, zero padding (k-1)//2, no bias. (B,H,W,C) → (B,H',W',C).

  The input may be a `DeferredNorm`: the norm and ReLU are then fused into the convolution,
  and with `moments` (float32) the output is `WithMoments`, its batch statistics taken in the
  same pass for the `BatchNorm` that follows.
  """
  kernel_size: Tuple[int, int] = (3, 3)
  strides: Tuple[int, int] = (1, 1)
  kernel_init: Callable = kaiming_fan_out
  moments: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    pending = x if isinstance(x, DeferredNorm) else None
    channels = (pending.x if pending else x).shape[-1]
    kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, 1, channels),
                        jnp.float32)
    if pending is not None and self.moments and self.dtype == jnp.float32:
      return WithMoments(*fast_ops.affine_relu_depthwise_moments(*pending, kernel, self.strides))
    if pending is not None:
      return fast_ops.affine_relu_depthwise(*pending, kernel, self.strides).astype(self.dtype)
    return fast_ops.depthwise_conv(x.astype(self.dtype), kernel.astype(self.dtype),
                                   self.strides)


class Conv(nn.Module):
  """Dense k×k convolution, zero padding (k-1)//2, no bias (`nn.Conv`'s `kernel`, HWIO)."""
  features: int
  kernel_size: Tuple[int, int] = (3, 3)
  strides: Tuple[int, int] = (1, 1)
  kernel_init: Callable = kaiming_fan_out
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init,
                        (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
    return fast_ops.conv(x.astype(self.dtype), kernel.astype(self.dtype), self.strides)


class PointwiseConv(nn.Module):
  """1×1 convolution as a (N, Cin) × (Cin, Cout) matmul, no bias. (B,H,W,Cin) → (B,H,W,features).

  The input may be a `DeferredNorm`: the norm and ReLU are then fused into the matmul. With
  `moments` (float32) the output is `WithMoments`: the batch statistics are summed from the
  output tiles in the same pass.

  The 2-D form matters on CPU: the gradient of a 4-D `dot_general` made XLA transpose the
  activations through a slow strided copy.
  """
  features: int
  kernel_init: Callable = kaiming_fan_out
  moments: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    pending = x if isinstance(x, DeferredNorm) else None
    if pending is not None and self.dtype != jnp.float32:
      x, pending = pending.apply(), None
    shape = (pending.x if pending else x).shape
    kernel = self.param("kernel", self.kernel_init, (1, 1, shape[-1], self.features),
                        jnp.float32)
    if pending is not None:
      args = (pending.x.reshape(-1, shape[-1]), pending.center, pending.a, pending.b,
              kernel[0, 0])
      if self.moments:
        out, mean, var = fast_ops.affine_relu_matmul_moments(*args)
        return WithMoments(out.reshape(*shape[:-1], self.features), mean, var)
      return fast_ops.affine_relu_matmul(*args).reshape(*shape[:-1], self.features)
    flat = x.reshape(-1, x.shape[-1]).astype(self.dtype)
    if self.moments and self.dtype == jnp.float32:
      out, mean, var = fast_ops.matmul_moments(flat, kernel[0, 0])
      return WithMoments(out.reshape(*x.shape[:-1], self.features), mean, var)
    if self.dtype == jnp.float32:
      out = fast_ops.matmul(flat, kernel[0, 0])
    else:
      out = jnp.dot(flat, kernel[0, 0].astype(self.dtype))
    return out.reshape(*x.shape[:-1], self.features)


class BatchNorm(nn.Module):
  """`nn.BatchNorm` (PyTorch defaults: momentum 0.1 → 0.9, eps 1e-5, two-pass variance) with an
  optional fused ReLU and the written-out gradient of `fast_ops.batch_norm`.

  Same variables as `nn.BatchNorm` (no `scale` and `bias` with `affine=False`: PyTorch's
  `affine=False`); the running variance averages the unbiased batch variance,
  as PyTorch's (Flax's averages the biased one: over n values per channel a factor n/(n − 1)
  apart, which matters for the small maps of the last stages).
  With `defer` (training, ReLU, float32), the batch statistics are taken and the running
  averages updated here, but the normalisation and ReLU are returned as a `DeferredNorm` for the
  next layer to apply within its own pass. In training the input may be `WithMoments`: the
  statistics its producer took are used (and differentiated through) instead of new ones.
  """
  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5
  relu: bool = False
  defer: bool = False
  dtype: Any = jnp.float32
  affine: bool = True

  @nn.compact
  def __call__(self, x):
    given = x if isinstance(x, WithMoments) else None
    x = given.y if given else x
    features = (x.shape[-1],)
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features)
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
    if self.affine:
      scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
      bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
    else:
      scale, bias = jnp.ones(features, jnp.float32), jnp.zeros(features, jnp.float32)
    if self.use_running_average:
      if given:
        raise ValueError("BatchNorm: batch statistics were given in evaluation mode")
      mul = lax.rsqrt(ra_var.value + self.epsilon) * scale
      y = (x.astype(jnp.float32) - ra_mean.value) * mul + bias
      y = jnp.maximum(y, 0) if self.relu else y
      return y.astype(self.dtype)
    if self.defer and self.relu and x.dtype == jnp.float32:
      if given:
        mean, var = given.mean, given.var
      else:
        mean, var = fast_ops.moments(x.reshape(-1, x.shape[-1]))
      out = DeferredNorm(x, mean, lax.rsqrt(var + self.epsilon) * scale, bias)
    elif given:
      mean, var = given.mean, given.var
      out = fast_ops.normalize(x.astype(jnp.float32), mean, var, scale, bias,
                               epsilon=self.epsilon, relu=self.relu).astype(self.dtype)
    else:
      y, mean, var = fast_ops.batch_norm(x, scale, bias, epsilon=self.epsilon, relu=self.relu)
      out = y.astype(self.dtype)
    if not self.is_initializing():
      # torch.nn.BatchNorm2d keeps the unbiased batch variance (÷ (n − 1)) in its running
      # average while normalising with the biased one; evaluation uses the running average.
      count = x.size // x.shape[-1]
      unbiased = var * (count / max(count - 1, 1))
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * lax.stop_gradient(mean)
      ra_var.value = (self.momentum * ra_var.value
                      + (1 - self.momentum) * lax.stop_gradient(unbiased))
    return out


class GRN(nn.Module):
  """Global response normalisation (ConvNeXt-V2) with scalar γ, β initialised to 0 (d23).

  gx = ‖x‖₂ over (H, W) per (b, c); nx = gx / (mean_c gx + 1e-6); y = γ·(x·nx) + β + x.
  """

  @nn.compact
  def __call__(self, x):
    gamma = self.param("gamma", nn.initializers.zeros, (1,), jnp.float32)
    beta = self.param("beta", nn.initializers.zeros, (1,), jnp.float32)
    gx = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=(1, 2), keepdims=True))
    nx = gx / (jnp.mean(gx, axis=-1, keepdims=True) + 1e-6)
    return (gamma * (x * nx) + beta + x).astype(x.dtype)


NORMS = ("batch", "layer", "none")


class Identity(nn.Module):
  """No normalisation (the `norm="none"` ablation): no variables, x unchanged."""

  @nn.compact
  def __call__(self, x):
    return x


def make_norm(kind: str, train: bool, dtype, name: str | None = None) -> nn.Module:
  """A norm over the last axis (channels, or the features of a (B, D) embedding).

  "batch": BatchNorm (PyTorch defaults; statistics over every other axis); "layer": LayerNorm
  over the last axis only, per position (for a (B, H, W, C) map the channel LayerNorm of
  ConvNeXt, for a (B, D) embedding LayerNorm1D; PyTorch eps 1e-5, scale and bias (C,), the same
  parameter count as BatchNorm); "none": `Identity`.
  """
  if kind == "batch":
    return BatchNorm(use_running_average=not train, dtype=dtype, name=name)
  if kind == "layer":
    # Two-pass variance: the one-pass E[x²] − E[x]² loses most float32 digits when the mean is
    # large beside the spread (unnormalised log-mels are around −10).
    return nn.LayerNorm(epsilon=1e-5, dtype=dtype, use_fast_variance=False, name=name)
  if kind == "none":
    return Identity(name=name)
  raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class ConvNormAct(nn.Module):
  """Conv (k×k, stride, zero pad (k-1)//2, no bias) → norm → ReLU (torchvision Conv2dNormActivation).

  Depthwise when `depthwise` (features = input channels); 1×1 convolutions run as matmuls.
  `norm` is one of `NORMS` ("none": conv → ReLU, still without a bias, as when a PyTorch
  model's BatchNorm2d is replaced by nn.Identity).
  With `defer_norm` (batch norm with ReLU, training, float32) the output is a `DeferredNorm`
  that a following depthwise or 1×1 `ConvNormAct` fuses into its convolution. A 1×1
  convolution, or a depthwise one with a fused norm, before a batch norm (training, float32)
  takes the norm's statistics in its own pass (`WithMoments`).
  """
  features: int
  kernel_size: Tuple[int, int] = (3, 3)
  strides: Tuple[int, int] = (1, 1)
  depthwise: bool = False
  activation: bool = True
  norm: str = "batch"
  defer_norm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    pointwise = self.kernel_size == (1, 1) and self.strides == (1, 1)
    if isinstance(x, DeferredNorm) and not (self.depthwise or pointwise):
      x = x.apply().astype(self.dtype)
    # In training the batch norm's statistics come from the convolution's own pass
    # (`WithMoments`) where it has one: the fused 1×1 and the norm-fused depthwise convolutions.
    moments = train and self.norm == "batch" and self.dtype == jnp.float32
    if self.depthwise:
      x = DepthwiseConv(self.kernel_size, self.strides, moments=moments, dtype=self.dtype,
                        name="conv")(x)
    elif pointwise:
      x = PointwiseConv(self.features, moments=moments, dtype=self.dtype, name="conv")(x)
    else:
      x = Conv(self.features, self.kernel_size, self.strides, dtype=self.dtype, name="conv")(x)
    if self.norm == "batch":   # ReLU fused into the normalisation and its gradient
      return BatchNorm(use_running_average=not train, relu=self.activation,
                       defer=self.defer_norm, dtype=self.dtype, name="norm")(x)
    x = make_norm(self.norm, train, self.dtype, name="norm")(x)
    return nn.relu(x) if self.activation else x


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
  """torchvision `_make_divisible`: nearest multiple of `divisor`, never 10 % below `value`."""
  min_value = divisor if min_value is None else min_value
  new = max(min_value, int(value + divisor / 2) // divisor * divisor)
  if new < 0.9 * value:
    new += divisor
  return new


def avg_pool_shortcut(x, strides: Sequence[int]):
  """AvgPool2d(3, stride, padding=1, count_include_pad=True): always divides by 9, so it is the
  depthwise convolution with every tap 1/9 (XLA's CPU reduce-window gradient is slow)."""
  kernel = jnp.full((3, 3, 1, x.shape[-1]), 1.0 / 9.0, x.dtype)
  return fast_ops.depthwise_conv(x, kernel, tuple(strides))


def adaptive_avg_pool_time(x: jax.Array, bins: int) -> jax.Array:
  """(B, T, D) → (B, bins, D) float32 like `F.adaptive_avg_pool1d`: bin i averages frames
  [floor(i·T/bins), ceil((i+1)·T/bins)) (T < bins repeats frames)."""
  t = x.shape[1]
  weights = np.zeros((bins, t), np.float32)
  for i in range(bins):
    start, end = (i * t) // bins, -(-((i + 1) * t) // bins)
    weights[i, start:end] = 1.0 / (end - start)
  return jnp.einsum("kt,btd->bkd", weights, x.astype(jnp.float32),
                    precision=lax.Precision.HIGHEST)
