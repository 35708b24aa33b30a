"""Building blocks shared by the CNN students and teachers (NHWC: batch, freq, time, channels).

`DepthwiseConv` and `PointwiseConv` keep the parameter names and shapes of
`nn.Conv(feature_group_count=C)` and a 1×1 `nn.Conv` (`kernel` (kh, kw, 1, C) and (1, 1, Cin, Cout)),
so checkpoints move freely between them and the plain layers, but compute as shifted
multiply-adds and a matmul: XLA's CPU backend runs grouped convolutions several times slower.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

# PyTorch `kaiming_normal_(mode="fan_out")`: gain √2, untruncated normal, fan_out = out·kh·kw.
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class DepthwiseConv(nn.Module):
  """Depthwise k×k convolution, zero padding (k-1)//2, no bias. (B,H,W,C) → (B,H',W',C)."""
  kernel_size: Tuple[int, int] = (3, 3)
  strides: Tuple[int, int] = (1, 1)
  kernel_init: Callable = kaiming_fan_out
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    kh, kw = self.kernel_size
    sh, sw = self.strides
    kernel = self.param("kernel", self.kernel_init, (kh, kw, 1, channels), jnp.float32)
    kernel = kernel.astype(self.dtype)
    x = x.astype(self.dtype)
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    x = jnp.pad(x, ((0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)))
    batch, height, width, _ = x.shape
    out_h = (height - kh) // sh + 1
    out_w = (width - kw) // sw + 1
    out = None
    for i in range(kh):
      for j in range(kw):
        tap = lax.slice(x, (0, i, j, 0),
                        (batch, i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, channels),
                        (1, sh, sw, 1))
        term = tap * kernel[i, j, 0]
        out = term if out is None else out + term
    return out


class PointwiseConv(nn.Module):
  """1×1 convolution as a matmul over channels, no bias. (B,H,W,Cin) → (B,H,W,features)."""
  features: int
  kernel_init: Callable = kaiming_fan_out
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features),
                        jnp.float32)
    return jnp.dot(x.astype(self.dtype), kernel[0, 0].astype(self.dtype))


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


def make_norm(kind: str, train: bool, dtype, name: str | None = None) -> nn.Module:
  """BatchNorm (PyTorch defaults: momentum 0.1 → Flax 0.9, eps 1e-5) or channel LayerNorm."""
  # Two-pass variance: the one-pass E[x²] − E[x]² loses most float32 digits when the mean is
  # large beside the spread (unnormalised log-mels are around −10), which made gradients depend
  # on the reduction order (1 vs 8 devices differed by percents).
  if kind == "batch":
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        dtype=dtype, use_fast_variance=False, name=name)
  if kind == "layer":
    return nn.LayerNorm(epsilon=1e-5, dtype=dtype, use_fast_variance=False, name=name)
  raise ValueError(f"norm must be 'batch' or 'layer', got {kind!r}")


class ConvNormAct(nn.Module):
  """Conv (k×k, stride, zero pad (k-1)//2, no bias) → norm → ReLU (torchvision Conv2dNormActivation).

  Depthwise when `depthwise` (features = input channels); 1×1 convolutions run as matmuls.
  """
  features: int
  kernel_size: Tuple[int, int] = (3, 3)
  strides: Tuple[int, int] = (1, 1)
  depthwise: bool = False
  activation: bool = True
  norm: str = "batch"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    if self.depthwise:
      x = DepthwiseConv(self.kernel_size, self.strides, dtype=self.dtype, name="conv")(x)
    elif self.kernel_size == (1, 1) and self.strides == (1, 1):
      x = PointwiseConv(self.features, dtype=self.dtype, name="conv")(x)
    else:
      pads = [((k - 1) // 2, (k - 1) // 2) for k in self.kernel_size]
      x = nn.Conv(self.features, self.kernel_size, self.strides, padding=pads, use_bias=False,
                  kernel_init=kaiming_fan_out, dtype=self.dtype, name="conv")(x)
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
  """AvgPool2d(3, stride, padding=1, count_include_pad=True): always divides by 9."""
  return nn.avg_pool(x, (3, 3), tuple(strides), padding=((1, 1), (1, 1)), count_include_pad=True)
