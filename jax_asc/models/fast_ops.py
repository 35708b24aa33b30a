"""Differentiable operations with hand-written gradients, chosen per backend where that matters.

* `depthwise_conv`: on CPU the native kernels of `jax_asc.native` (forward, input and kernel
  gradients, each one pass over its inputs); elsewhere (GPU, TPU) XLA's grouped convolution,
  which cuDNN and the TPU compiler run well. Without the native kernels, CPU falls back to nine
  shifted multiply-adds. All forms agree with `lax.conv_general_dilated` (tests/test_fast_layers.py).
* `affine_relu_depthwise`: relu((x − center)·a + b) followed by a depthwise convolution, the
  normalised activation never written to memory on CPU (CP-Mobile's expansion norm fused into
  its depthwise layer); `moments`, the differentiable batch statistics it is used with.
* `affine_relu_matmul`: the same for a 1×1 convolution (the depthwise layer's norm fused into
  the projection). The backward passes of both take the input side in one native pass: the
  transposed convolution (or dy·wᵀ), its ReLU mask, dx and the norm's gradient sums, the
  intermediate gradient never written to memory.
* `matmul` / `matmul_tn`: 1×1 convolutions as 2-D matmuls, the weight gradient read in place.
* `matmul_moments` / `affine_relu_matmul_moments`: those 1×1 convolutions with their output's
  batch statistics summed from each output tile in the same pass (no pass over the output);
  `normalize`, the batch norm's apply that takes such statistics.
* `batch_norm`: training-mode batch normalisation with an optional fused ReLU and a backward
  pass written out (two reductions and one elementwise pass), on a (N, C) view of the input.
  XLA's own differentiation of the same arithmetic produced transposed copies and extra passes
  that cost more than the convolutions around it.

Shapes: NHWC activations; depthwise kernels (kh, kw, 1, C) as `nn.Conv(feature_group_count=C)`.
"""
from __future__ import annotations

import functools
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jax_asc import native


# ----------------------------------------------------------------------------- depthwise
def _padding(kernel_size: Tuple[int, int]):
  return [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel_size]


def _output_size(x_shape, kernel_shape, strides):
  """(out_h, out_w) of a convolution of x (B, H, W, C) with padding `_padding`."""
  (pt, pb), (pl, pr) = _padding(kernel_shape[:2])
  return ((x_shape[1] + pt + pb - kernel_shape[0]) // strides[0] + 1,
          (x_shape[2] + pl + pr - kernel_shape[1]) // strides[1] + 1)


def depthwise_conv_xla(x, kernel, strides):
  """XLA's grouped convolution (the reference the other forms are tested against)."""
  return lax.conv_general_dilated(
      x, kernel, tuple(strides), _padding(kernel.shape[:2]),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])


def depthwise_conv_shifts(x, kernel, strides):
  """The same as kh·kw strided slices of the padded input times the taps, summed."""
  kh, kw = kernel.shape[:2]
  sh, sw = strides
  (pt, pb), (pl, pr) = _padding((kh, kw))
  padded = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  batch, height, width, channels = padded.shape
  out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = lax.slice(padded, (0, i, j, 0),
                      (batch, i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, channels),
                      (1, sh, sw, 1))
      term = tap * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


def _stride_attrs(strides):
  return {"stride_h": np.int64(strides[0]), "stride_w": np.int64(strides[1])}


def _ffi(target, result_shape, *args, strides):
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(result_shape, jnp.float32))(
      *args, **_stride_attrs(strides))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise_native(x, kernel, strides):
  out_h, out_w = _output_size(x.shape, kernel.shape, strides)
  return _ffi("jax_asc_depthwise_forward", (x.shape[0], out_h, out_w, x.shape[3]),
              x, kernel[:, :, 0, :], strides=strides)


def _depthwise_native_fwd(x, kernel, strides):
  return _depthwise_native(x, kernel, strides), (x, kernel)


def _depthwise_native_bwd(strides, residuals, dy):
  x, kernel = residuals
  dx = _ffi("jax_asc_depthwise_input_grad", x.shape, dy, kernel[:, :, 0, :], strides=strides)
  dk = _ffi("jax_asc_depthwise_kernel_grad", kernel.shape[:2] + kernel.shape[3:], x, dy,
            strides=strides)
  return dx, dk[:, :, None, :]


_depthwise_native.defvjp(_depthwise_native_fwd, _depthwise_native_bwd)


def depthwise_conv(x: jax.Array, kernel: jax.Array, strides=(1, 1)) -> jax.Array:
  """Depthwise convolution, zero padding (k−1)//2 (+1 after for even k), no bias.

  x (B, H, W, C), kernel (kh, kw, 1, C) → (B, ⌈H/sh⌉, ⌈W/sw⌉, C) for odd k, in x's dtype.
  """
  strides = tuple(int(s) for s in strides)
  kernel = kernel.astype(x.dtype)
  on_other = functools.partial(depthwise_conv_xla, strides=strides)
  if not native.available():
    on_cpu = functools.partial(depthwise_conv_shifts, strides=strides)
  else:
    def on_cpu(x, kernel):   # float32 kernels; half precision is computed in float32
      out = _depthwise_native(x.astype(jnp.float32), kernel.astype(jnp.float32), strides)
      return out.astype(x.dtype)
  return lax.platform_dependent(x, kernel, cpu=on_cpu, default=on_other)


# ----------------------------------------------------------------------------- norm → depthwise
def affine_relu(x, center, a, b):
  """relu((x − center)·a + b), per channel of the last axis: a batch norm's apply and ReLU."""
  return jnp.maximum((x - center) * a + b, 0)


def affine_relu_depthwise_xla(x, center, a, b, kernel, strides):
  """depthwise_conv(relu((x − center)·a + b), kernel) from XLA's operations."""
  return depthwise_conv_xla(affine_relu(x, center, a, b), kernel, strides)


def _affine_ffi(target, result_shape, x, a, b, last, strides):
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(result_shape, jnp.float32))(
      x, a, b, last, **_stride_attrs(strides))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _affine_relu_depthwise_native(x, center, a, b, kernel, strides):
  out_h, out_w = _output_size(x.shape, kernel.shape, strides)
  return _affine_ffi("jax_asc_affine_relu_depthwise_forward",
                     (x.shape[0], out_h, out_w, x.shape[3]), x, a, b - center * a,
                     kernel[:, :, 0, :], strides)


def _affine_relu_depthwise_native_fwd(x, center, a, b, kernel, strides):
  return (_affine_relu_depthwise_native(x, center, a, b, kernel, strides),
          (x, center, a, b, kernel))


def _affine_relu_vjp(x, center, a, shift, dz):
  """Cotangents of (x, center, a, b) for z = relu((x − center)·a + b) = relu(x·a + shift),
  given dz: the sums over every axis but the last centred on `center` (native on CPU)."""
  x2, dz2 = x.reshape(-1, x.shape[-1]), dz.reshape(-1, x.shape[-1])
  sum_g, sum_g_centred = _grad_sums(x2, dz2, center, a, shift, True)
  dx = a * jnp.where(x * a + shift > 0, dz, 0)
  return dx, -a * sum_g, sum_g_centred, sum_g


def _affine_relu_depthwise_backward(target, strides, x, center, a, b, kernel, dy, *share):
  """Cotangents of (x, center, a, b, kernel) from one native pass, image by image in cache: the
  kernel gradient, dz (the transposed convolution), its ReLU mask, dx and both norm sums; with
  `share` = (y, mean, dmean, dvar), dy completed by its statistics' share first."""
  shift = b - center * a                       # relu(x·a + shift), the kernels' form
  stat = jax.ShapeDtypeStruct(x.shape[-1:], jnp.float32)
  dx, sum_g, sum_g_centred, dk = jax.ffi.ffi_call(
      target, (jax.ShapeDtypeStruct(x.shape, jnp.float32), stat, stat,
               jax.ShapeDtypeStruct(kernel.shape[:2] + kernel.shape[3:], jnp.float32)))(
          dy, kernel[:, :, 0, :], x, a, shift, center, *share, **_stride_attrs(strides))
  return dx, -a * sum_g, sum_g_centred, sum_g, dk[:, :, None, :]


def _affine_relu_depthwise_native_bwd(strides, residuals, dy):
  return _affine_relu_depthwise_backward("jax_asc_affine_relu_depthwise_backward", strides,
                                         *residuals, dy)


_affine_relu_depthwise_native.defvjp(_affine_relu_depthwise_native_fwd,
                                     _affine_relu_depthwise_native_bwd)


def affine_relu_depthwise(x: jax.Array, center: jax.Array, a: jax.Array, b: jax.Array,
                          kernel: jax.Array, strides=(1, 1)) -> jax.Array:
  """depthwise_conv(relu((x − center)·a + b), kernel, strides): a batch norm's apply and ReLU
  fused into the depthwise convolution after it.

  x (B, H, W, C) float32; center, a, b (C,); kernel (kh, kw, 1, C). On CPU the native kernels
  apply relu(x·a + b − center·a) to one image at a time in a cache-resident buffer (forward
  and kernel gradient), so the normalised activation is never written to memory; the input
  gradient's sums over (B, H, W) are centred on `center` (the batch mean, for exact sums).
  Elsewhere, and without the native kernels, the same arithmetic from XLA's operations.
  """
  return _norm_fused_depthwise(_affine_relu_depthwise_native, affine_relu_depthwise_xla,
                               x, center, a, b, kernel, strides)


def _norm_fused_depthwise(on_cpu, xla, x, center, a, b, kernel, strides):
  """`on_cpu` (the native form) where the kernels run and x is float32, else `xla`; both take
  (x, center, a, b, kernel) and `strides`."""
  strides = tuple(int(s) for s in strides)
  xla = functools.partial(xla, strides=strides)
  if not native.available() or x.dtype != jnp.float32:
    return xla(x, center, a, b, kernel.astype(x.dtype))
  return lax.platform_dependent(x, center, a, b, kernel.astype(jnp.float32),
                                cpu=functools.partial(on_cpu, strides=strides), default=xla)


def affine_relu_matmul_xla(x, center, a, b, kernel):
  """matmul(relu((x − center)·a + b), kernel) from XLA's operations (and `matmul`)."""
  return matmul(affine_relu(x, center, a, b), kernel)


def _affine_matmul_ffi(target, shape, x, a, shift, last):
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, jnp.float32))(x, a, shift, last)


@jax.custom_vjp
def _affine_relu_matmul_native(x, center, a, b, kernel):
  return _affine_matmul_ffi("jax_asc_affine_relu_matmul", (x.shape[0], kernel.shape[1]),
                            x, a, b - center * a, kernel)


def _affine_relu_matmul_native_fwd(x, center, a, b, kernel):
  return _affine_relu_matmul_native(x, center, a, b, kernel), (x, center, a, b, kernel)


# Input channels from which the input gradient's fused native pass is used: at least one vector
# of the widest target (the kernel checks K against its own vector width).
_FUSED_INPUT_GRAD_CHANNELS = 16


def _affine_relu_matmul_native_bwd(residuals, dy):
  x, center, a, b, kernel = residuals
  shift = b - center * a
  dk = _affine_matmul_ffi("jax_asc_affine_relu_matmul_tn", kernel.shape, x, a, shift, dy)
  if x.shape[1] < _FUSED_INPUT_GRAD_CHANNELS:
    return (*_affine_relu_vjp(x, center, a, shift, jnp.dot(dy, kernel.T)), dk)
  # dz = dy·kernelᵀ, its ReLU mask, dx and the two sums in one pass (dz never written).
  stat = jax.ShapeDtypeStruct(x.shape[1:], jnp.float32)
  dx, sum_g, sum_g_centred = jax.ffi.ffi_call(
      "jax_asc_affine_relu_matmul_input_grad",
      (jax.ShapeDtypeStruct(x.shape, jnp.float32), stat, stat))(x, a, shift, center, dy, kernel)
  return dx, -a * sum_g, sum_g_centred, sum_g, dk


_affine_relu_matmul_native.defvjp(_affine_relu_matmul_native_fwd, _affine_relu_matmul_native_bwd)


def affine_relu_matmul(x: jax.Array, center: jax.Array, a: jax.Array, b: jax.Array,
                       kernel: jax.Array) -> jax.Array:
  """relu((x − center)·a + b) · kernel: a batch norm's apply and ReLU fused into the 1×1
  convolution after it.

  x (N, K) float32; center, a, b (K,); kernel (K, M). On CPU (M ≥ 16) the native kernels
  normalise each tile of rows in cache (forward and weight gradient), so the normalised input
  is never written to memory; elsewhere the same arithmetic from XLA's operations.
  """
  if not native.available() or x.dtype != jnp.float32 or kernel.shape[1] < 16:
    return affine_relu_matmul_xla(x, center, a, b, kernel.astype(x.dtype))
  return lax.platform_dependent(x, center, a, b, kernel.astype(jnp.float32),
                                cpu=_affine_relu_matmul_native, default=affine_relu_matmul_xla)


def _affine_relu_matmul_moments_xla(x, center, a, b, kernel):
  y = affine_relu_matmul_xla(x, center, a, b, kernel)
  return (y, *moments(y))


@jax.custom_vjp
def _affine_relu_matmul_moments_native(x, center, a, b, kernel):
  stat = jax.ShapeDtypeStruct(kernel.shape[1:], jnp.float32)
  out = jax.ShapeDtypeStruct((x.shape[0], kernel.shape[1]), jnp.float32)
  return tuple(jax.ffi.ffi_call("jax_asc_affine_relu_matmul_moments", (out, stat, stat))(
      x, a, b - center * a, kernel))


def _affine_relu_matmul_moments_native_fwd(x, center, a, b, kernel):
  y, mean, var = _affine_relu_matmul_moments_native(x, center, a, b, kernel)
  return (y, mean, var), (x, center, a, b, kernel, y, mean)


def _affine_relu_matmul_moments_native_bwd(residuals, cotangents):
  x, center, a, b, kernel, y, mean = residuals
  dy, dmean, dvar = cotangents
  if x.shape[1] < _FUSED_INPUT_GRAD_CHANNELS:
    dy = dy + _moments_bwd((y, mean), (dmean, dvar))[0]   # the statistics' share
    return _affine_relu_matmul_native_bwd((x, center, a, b, kernel), dy)
  # The statistics' share, the kernel gradient, dz = dy·kernelᵀ, its ReLU mask, dx and the
  # norm's two sums in one pass over the rows (neither dy + share nor dz written).
  shift = b - center * a
  stat = jax.ShapeDtypeStruct(x.shape[1:], jnp.float32)
  shapes = (jax.ShapeDtypeStruct(x.shape, jnp.float32), stat, stat,
            jax.ShapeDtypeStruct(kernel.shape, jnp.float32))
  dx, sum_g, sum_g_centred, dk = jax.ffi.ffi_call(
      "jax_asc_affine_relu_matmul_moments_backward", shapes)(
          x, a, shift, center, kernel, y, dy, mean, dmean, dvar)
  return dx, -a * sum_g, sum_g_centred, sum_g, dk


_affine_relu_matmul_moments_native.defvjp(_affine_relu_matmul_moments_native_fwd,
                                          _affine_relu_matmul_moments_native_bwd)


def affine_relu_matmul_moments(x: jax.Array, center: jax.Array, a: jax.Array, b: jax.Array,
                               kernel: jax.Array):
  """(y, mean, var): y = `affine_relu_matmul(x, center, a, b, kernel)` and its batch statistics
  over the rows (as `moments(y)`), differentiable in all three.

  On CPU (M ≥ 16) the native kernel sums each output tile while it is in registers, so the
  statistics cost no pass over y; elsewhere `moments` of the XLA form.
  """
  if not native.available() or x.dtype != jnp.float32 or kernel.shape[1] < 16:
    return _affine_relu_matmul_moments_xla(x, center, a, b, kernel.astype(x.dtype))
  return lax.platform_dependent(x, center, a, b, kernel.astype(jnp.float32),
                                cpu=_affine_relu_matmul_moments_native,
                                default=_affine_relu_matmul_moments_xla)


def _affine_relu_depthwise_moments_xla(x, center, a, b, kernel, strides):
  y = affine_relu_depthwise_xla(x, center, a, b, kernel, strides)
  return (y, *moments(y.reshape(-1, y.shape[-1])))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _affine_relu_depthwise_moments_native(x, center, a, b, kernel, strides):
  out_h, out_w = _output_size(x.shape, kernel.shape, strides)
  stat = jax.ShapeDtypeStruct(x.shape[-1:], jnp.float32)
  out = jax.ShapeDtypeStruct((x.shape[0], out_h, out_w, x.shape[3]), jnp.float32)
  return tuple(jax.ffi.ffi_call("jax_asc_affine_relu_depthwise_moments_forward",
                                (out, stat, stat))(
      x, a, b - center * a, kernel[:, :, 0, :], **_stride_attrs(strides)))


def _affine_relu_depthwise_moments_native_fwd(x, center, a, b, kernel, strides):
  y, mean, var = _affine_relu_depthwise_moments_native(x, center, a, b, kernel, strides)
  return (y, mean, var), (x, center, a, b, kernel, y, mean)


def _affine_relu_depthwise_moments_native_bwd(strides, residuals, cotangents):
  x, center, a, b, kernel, y, mean = residuals
  dy, dmean, dvar = cotangents
  return _affine_relu_depthwise_backward("jax_asc_affine_relu_depthwise_moments_backward",
                                         strides, x, center, a, b, kernel, dy,
                                         y, mean, dmean, dvar)


_affine_relu_depthwise_moments_native.defvjp(_affine_relu_depthwise_moments_native_fwd,
                                             _affine_relu_depthwise_moments_native_bwd)


def affine_relu_depthwise_moments(x: jax.Array, center: jax.Array, a: jax.Array, b: jax.Array,
                                  kernel: jax.Array, strides=(1, 1)):
  """(y, mean, var): y = `affine_relu_depthwise(x, center, a, b, kernel, strides)` and its batch
  statistics over (B, H', W') (as `moments`), differentiable in all three.

  On CPU the native kernels take the statistics while each image's output is in cache, and
  the backward pass adds their share to dy image by image; elsewhere `moments` of the XLA form.
  """
  return _norm_fused_depthwise(_affine_relu_depthwise_moments_native,
                               _affine_relu_depthwise_moments_xla, x, center, a, b, kernel,
                               strides)


# ----------------------------------------------------------------------------- small convolution
MAX_NATIVE_CHANNELS = 64


def conv_xla(x, kernel, strides):
  """XLA's dense convolution, zero padding (k−1)//2 (+1 after for even k)."""
  return lax.conv_general_dilated(x, kernel, tuple(strides), _padding(kernel.shape[:2]),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_native(x, kernel, strides):
  out_h, out_w = _output_size(x.shape, kernel.shape, strides)
  return _ffi("jax_asc_conv_forward", (x.shape[0], out_h, out_w, kernel.shape[3]), x, kernel,
              strides=strides)


def _conv_native_fwd(x, kernel, strides):
  return _conv_native(x, kernel, strides), (x, kernel)


def _conv_native_bwd(strides, residuals, dy):
  x, kernel = residuals
  kh, kw, cin, _ = kernel.shape
  if (kh, kw) == (3, 3) and cin % 8 == 0 and set(strides) <= {1, 2}:
    # A scatter of the nine taps' products: XLA convolves the zero-dilated gradient instead
    # (four times the arithmetic at stride 2).
    dx = _ffi("jax_asc_conv_input_grad", x.shape, dy, kernel, strides=strides)
  else:
    _, input_vjp = jax.vjp(lambda x: conv_xla(x, kernel, strides), x)
    dx = input_vjp(dy)[0]
  dk = _ffi("jax_asc_conv_kernel_grad", kernel.shape, x, dy, strides=strides)
  return dx, dk


_conv_native.defvjp(_conv_native_fwd, _conv_native_bwd)


def conv(x: jax.Array, kernel: jax.Array, strides=(1, 1)) -> jax.Array:
  """Dense k×k convolution, zero padding (k−1)//2, no bias: x (B, H, W, Cin), kernel HWIO.

  On CPU, for odd k and at most 64 input and output channels (the CP-Mobile stems), the native
  kernels (3×3 fast paths vectorised over the output channels; the general kernel gradient as
  im2col tiles); else XLA's.
  """
  strides = tuple(int(s) for s in strides)
  kernel = kernel.astype(x.dtype)
  xla = functools.partial(conv_xla, strides=strides)
  kh, kw, cin, cout = kernel.shape
  if not (native.available() and kh % 2 and kw % 2 and max(cin, cout) <= MAX_NATIVE_CHANNELS):
    return xla(x, kernel)

  def on_cpu(x, kernel):
    out = _conv_native(x.astype(jnp.float32), kernel.astype(jnp.float32), strides)
    return out.astype(x.dtype)
  return lax.platform_dependent(x, kernel, cpu=on_cpu, default=xla)


# ----------------------------------------------------------------------------- 1×1 convolution
def _matmul_tn_native(x, y):
  out = jax.ShapeDtypeStruct((x.shape[1], y.shape[1]), jnp.float32)
  return jax.ffi.ffi_call("jax_asc_matmul_tn", out)(x, y)


def matmul_tn(x: jax.Array, y: jax.Array) -> jax.Array:
  """xᵀ·y for x (N, K), y (N, M) float32: a 1×1 convolution's weight gradient (N positions)."""
  xla = lambda x, y: jnp.dot(x.T, y, precision=lax.Precision.HIGHEST)
  if not native.available():
    return xla(x, y)
  return lax.platform_dependent(x, y, cpu=_matmul_tn_native, default=xla)


def _matmul_moments_xla(x, kernel):
  y = matmul(x, kernel)
  return (y, *moments(y))


@jax.custom_vjp
def _matmul_moments_native(x, kernel):
  stat = jax.ShapeDtypeStruct(kernel.shape[1:], jnp.float32)
  out = jax.ShapeDtypeStruct((x.shape[0], kernel.shape[1]), jnp.float32)
  return tuple(jax.ffi.ffi_call("jax_asc_matmul_moments", (out, stat, stat))(x, kernel))


def _matmul_moments_native_fwd(x, kernel):
  y, mean, var = _matmul_moments_native(x, kernel)
  return (y, mean, var), (x, kernel, y, mean)


def _matmul_moments_native_bwd(residuals, cotangents):
  x, kernel, y, mean = residuals
  dy, dmean, dvar = cotangents
  if x.shape[1] < _FUSED_INPUT_GRAD_CHANNELS:
    dy = dy + _moments_bwd((y, mean), (dmean, dvar))[0]   # the statistics' share
    return _matmul_bwd((x, kernel), dy)
  # The statistics' share, dx and the kernel gradient in one pass (dy + share never written).
  shapes = (jax.ShapeDtypeStruct(x.shape, jnp.float32),
            jax.ShapeDtypeStruct(kernel.shape, jnp.float32))
  return tuple(jax.ffi.ffi_call("jax_asc_matmul_moments_backward", shapes)(
      x, kernel, y, dy, mean, dmean, dvar))


_matmul_moments_native.defvjp(_matmul_moments_native_fwd, _matmul_moments_native_bwd)


def matmul_moments(x: jax.Array, kernel: jax.Array):
  """(y, mean, var): y = x·kernel for x (N, K), kernel (K, M), float32, and its batch statistics
  over the rows (as `moments(y)`), differentiable in all three. On CPU (M ≥ 16) the native
  kernel sums each output tile while it is in registers; elsewhere `moments` of `matmul`."""
  if not native.available() or x.dtype != jnp.float32 or kernel.shape[1] < 16:
    return _matmul_moments_xla(x, kernel)
  return lax.platform_dependent(x, kernel, cpu=_matmul_moments_native,
                                default=_matmul_moments_xla)


@jax.custom_vjp
def matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x (N, K) · kernel (K, M), float32; the kernel gradient by `matmul_tn` (one pass on CPU)."""
  return jnp.dot(x, kernel)


def _matmul_fwd(x, kernel):
  return jnp.dot(x, kernel), (x, kernel)


def _matmul_bwd(residuals, dy):
  x, kernel = residuals
  return jnp.dot(dy, kernel.T), matmul_tn(x, dy)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


# ----------------------------------------------------------------------------- batch norm
def _moments_xla(x2):
  mean = jnp.mean(x2, axis=0)
  var = jnp.mean(jnp.square(x2 - mean), axis=0)   # two passes: exact for large means
  return mean, var


def _moments_native(x2):
  stat = jax.ShapeDtypeStruct(x2.shape[1:], jnp.float32)
  return tuple(jax.ffi.ffi_call("jax_asc_moments", (stat, stat))(x2))


def _moments(x2):
  """Mean and biased variance over axis 0 of (N, C): one pass on CPU, two with XLA."""
  if not native.available():
    return _moments_xla(x2)
  return lax.platform_dependent(x2, cpu=_moments_native, default=_moments_xla)


@jax.custom_vjp
def moments(x2: jax.Array):
  """Mean and biased variance over axis 0 of x2 (N, C) float32, differentiable."""
  return _moments(x2)


def _moments_fwd(x2):
  mean, var = _moments(x2)
  return (mean, var), (x2, mean)


def _moments_bwd(residuals, cotangents):
  x2, mean = residuals
  dmean, dvar = cotangents
  n = x2.shape[0]
  return (dmean / n + (x2 - mean) * (2.0 * dvar / n),)


moments.defvjp(_moments_fwd, _moments_bwd)


def _grad_sums_xla(x2, dy, mean, a, b, relu):
  g = jnp.where(x2 * a + b > 0, dy, 0) if relu else dy
  return jnp.sum(g, axis=0), jnp.sum(g * (x2 - mean), axis=0)


def _grad_sums(x2, dy, mean, a, b, relu):
  """(Σ g, Σ g·(x − mean)) over axis 0, g = dy masked by ReLU'(x·a + b) when `relu`."""
  if not native.available():
    return _grad_sums_xla(x2, dy, mean, a, b, relu)

  def on_cpu(x2, dy, mean, a, b):
    stat = jax.ShapeDtypeStruct(x2.shape[1:], jnp.float32)
    return tuple(jax.ffi.ffi_call("jax_asc_norm_grad_sums", (stat, stat))(
        x2, dy, mean, a, b, relu=np.int64(relu)))
  return lax.platform_dependent(
      x2, dy, mean, a, b, cpu=on_cpu,
      default=lambda *args: _grad_sums_xla(*args, relu))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_norm_2d(x2, scale, bias, epsilon, relu):
  mean, var = _moments(x2)
  # y = x·a + b rather than (x − mean)·a + bias: no centred copy shared with the variance pass.
  a = lax.rsqrt(var + epsilon) * scale
  y = x2 * a + (bias - mean * a)
  return (jnp.maximum(y, 0) if relu else y), mean, var


def _batch_norm_2d_fwd(x2, scale, bias, epsilon, relu):
  out = _batch_norm_2d(x2, scale, bias, epsilon, relu)
  _, mean, var = out
  return out, (x2, scale, bias, mean, var)


def _batch_norm_2d_bwd(epsilon, relu, residuals, cotangents):
  x2, scale, bias, mean, var = residuals
  dy, dmean, dvar = cotangents
  n = x2.shape[0]
  rstd = lax.rsqrt(var + epsilon)
  a = rstd * scale
  b = bias - mean * a
  dbias, dscale = _grad_sums(x2, dy, mean, a, b, relu)
  dscale = dscale * rstd
  if relu:   # the mask from the pre-activation, recomputed rather than stored
    dy = jnp.where(x2 * a + b > 0, dy, 0)
  # dx = a·(dy − mean(dy) − x̂·mean(dy·x̂)), with x̂ = (x − mean)·rstd; plus the cotangents of
  # the batch statistics, which are outputs too (for the running averages).
  dx = a * dy + (x2 - mean) * (2.0 * dvar / n - a * rstd * dscale / n) + (dmean - a * dbias) / n
  return dx, dscale, dbias


_batch_norm_2d.defvjp(_batch_norm_2d_fwd, _batch_norm_2d_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _normalize_2d(x2, mean, var, scale, bias, epsilon, relu):
  a = lax.rsqrt(var + epsilon) * scale
  y = x2 * a + (bias - mean * a)
  return jnp.maximum(y, 0) if relu else y


def _normalize_2d_fwd(x2, mean, var, scale, bias, epsilon, relu):
  return _normalize_2d(x2, mean, var, scale, bias, epsilon, relu), (x2, mean, var, scale, bias)


def _normalize_2d_bwd(epsilon, relu, residuals, dy):
  x2, mean, var, scale, bias = residuals
  rstd = lax.rsqrt(var + epsilon)
  a = rstd * scale
  b = bias - mean * a
  sum_g, sum_g_centred = _grad_sums(x2, dy, mean, a, b, relu)
  if relu:
    dy = jnp.where(x2 * a + b > 0, dy, 0)
  # y = (x − mean)·scale·(var + ε)^−½ + bias.
  dvar = -0.5 * a * rstd * rstd * sum_g_centred
  return a * dy, -a * sum_g, dvar, rstd * sum_g_centred, sum_g


_normalize_2d.defvjp(_normalize_2d_fwd, _normalize_2d_bwd)


def normalize(x: jax.Array, mean: jax.Array, var: jax.Array, scale: jax.Array,
              bias: jax.Array, *, epsilon: float = 1e-5, relu: bool = False) -> jax.Array:
  """A batch norm's apply with statistics taken elsewhere: (x − mean)·scale/√(var + ε) + bias,
  optionally then ReLU. x (..., C) float32; the rest (C,). Differentiable in every array (the
  statistics' cotangents flow back to where they were taken); the gradient's sums over every
  axis but the last are native on CPU, as in `batch_norm`."""
  shape = x.shape
  y = _normalize_2d(x.reshape(-1, shape[-1]), mean, var, scale, bias, float(epsilon), bool(relu))
  return y.reshape(shape)


def batch_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, *, epsilon: float = 1e-5,
               relu: bool = False):
  """Training-mode batch normalisation over every axis but the last, optionally then ReLU.

  x (..., C); scale, bias (C,). Returns (y in x's dtype, batch mean (C,), biased batch
  variance (C,)), statistics in float32, computed in two passes like
  `nn.BatchNorm(use_fast_variance=False)`.
  """
  shape = x.shape
  y, mean, var = _batch_norm_2d(x.reshape(-1, shape[-1]).astype(jnp.float32),
                                scale.astype(jnp.float32), bias.astype(jnp.float32),
                                float(epsilon), bool(relu))
  return y.reshape(shape).astype(x.dtype), mean, var
