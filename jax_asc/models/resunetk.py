"""ResUNetK: the label-queried separator of the DCASE 2026 Task 4 baseline (report 004).

Reference: nttcslab/dcase2026_task4_baseline `src/models/resunet2/resunet_mod.py` (`ResUNet30`,
`ResUNet30_Base`) with `config/separation/resunetk_capisdr.yaml` (4 input channels, 1 output
channel, K = 3 sources, label_len 54), itself derived from bytedance/uss `uss/models/resunet.py`.

    mixture (B, 4, L) ─ STFT per channel ─► |X|, cos∠X, sin∠X          (B, 4, T, 513)
    |X| ─ bn0 (per frequency bin) ─ zero-pad T to ×32 ─ drop bin 512 ─► (B, T', 512, 4)
        ─ 1×1 conv (4 → 32) ─ 6 encoder blocks ─ centre block ─ 6 decoder blocks (+ skips)
        ─ 1×1 conv (32 → K·4·3) ─ pad bin 512 with zeros, crop T' → T
    per source k and channel c: |M| = sigmoid, ∠M from (tanh, tanh);
        Y = ReLU(|X|·|M|)·e^{j(∠X + ∠M)} ─ 1×1 conv (4 → 1) on Re and Im ─ iSTFT
        ─ × source_mask[b, k] = 1[label_k ≠ 0] ─► (B, K, 1, L)

The query: label_vector (B, K·n_classes) → Linear–LayerNorm–ReLU–Linear–LayerNorm–ReLU →
condition (B, 512); every batch norm in the U-Net gets a FiLM shift β = Linear(512 → C)(condition)
**added** to its output before the leaky ReLU (no scale).

Layout: NHWC with H = time and W = frequency, i.e. the reference's (B, C, T, F) with channels
last (the repo's CNN students put frequency first; this model keeps the reference's order so its
kernels convert without a spatial transpose). Parameter names follow the reference's modules:
`encoder_block1/conv_block1/{bn1, conv1, …}`; a FiLM layer lives beside the batch norm it shifts
(`…/conv_block1/beta1` = the reference's `film.encoder_block1->conv_block1->beta1`).
`convert.resunetk_params` maps the released checkpoint. Two parts of the reference compute
nothing and are left out here: each decoder block's `bn2` and its FiLM `beta2`.
"""
from __future__ import annotations

from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax_asc.models.layers import BatchNorm

# The reference's init: `init_layer` = xavier_uniform weights and zero biases for the convolutions
# and FiLM layers, `init_bn` = 1 and 0; the query MLP and `out_conv` keep PyTorch's default,
# uniform(±1/√fan_in) for weights and biases.
xavier = nn.initializers.xavier_uniform()
torch_default = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")

# torch.nn.BatchNorm2d(momentum=0.01): running ← 0.99·running + 0.01·batch.
BN_MOMENTUM = 0.99
LEAKY_SLOPE = 0.01


def _torch_bias_init(fan_in: int):
  """PyTorch's default bias: uniform(±1/√fan_in)."""
  bound = 1.0 / np.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


# ----------------------------------------------------------------------------- STFT
def hann_periodic(n: int) -> np.ndarray:
  """scipy/librosa `get_window("hann", n, fftbins=True)`: 0.5 − 0.5·cos(2πi/n), float32 (n,)."""
  return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)


def stft(x: jax.Array, n_fft: int, hop: int) -> Tuple[jax.Array, jax.Array]:
  """torchlibrosa `STFT(n_fft, hop, win_length=n_fft, window="hann", center=True,
  pad_mode="reflect")`, which equals `librosa.stft` and `torch.stft(…, center=True,
  pad_mode="reflect", window=hann_window(n_fft))`.

  Args:
    x: (..., L) waveform, L > n_fft // 2 (reflect padding needs it).
  Returns:
    (real, imag): float32 (..., T, n_fft // 2 + 1), T = 1 + L // hop; frame t is centred on
    sample t·hop and the transform is unnormalised, Σ_n w[n]·x[n]·e^{−2πi kn/n_fft}.
  """
  length = x.shape[-1]
  pad = n_fft // 2
  if length <= pad:
    raise ValueError(f"stft: {length} samples are too few to reflect-pad by {pad}")
  x = jnp.pad(x.astype(jnp.float32), [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
  n_frames = 1 + length // hop
  index = np.arange(n_frames)[:, None] * hop + np.arange(n_fft)[None, :]
  spectrum = jnp.fft.rfft(x[..., index] * hann_periodic(n_fft), axis=-1)
  return jnp.real(spectrum), jnp.imag(spectrum)


def istft(real: jax.Array, imag: jax.Array, n_fft: int, hop: int, length: int) -> jax.Array:
  """torchlibrosa `ISTFT` (hann, center=True): the inverse of `stft`.

  Each frame's inverse real DFT (the imaginary parts of bins 0 and n_fft/2 ignored) is
  windowed, overlap-added, divided by the overlap-added squared window (clamped at 1e-11), and
  the centre padding is trimmed: samples [n_fft // 2, n_fft // 2 + length).

  Args:
    real, imag: (..., T, n_fft // 2 + 1).
  Returns:
    float32 (..., length).
  """
  n_frames = real.shape[-2]
  window = hann_periodic(n_fft)
  frames = jnp.fft.irfft(jax.lax.complex(real.astype(jnp.float32), imag.astype(jnp.float32)),
                         n=n_fft, axis=-1) * window                    # (..., T, n_fft)
  total = (n_frames - 1) * hop + n_fft
  index = np.arange(n_frames)[:, None] * hop + np.arange(n_fft)[None, :]
  y = jnp.zeros(real.shape[:-2] + (total,), jnp.float32).at[..., index].add(frames)
  envelope = np.zeros(total, np.float32)
  np.add.at(envelope, index, np.broadcast_to(window ** 2, index.shape))
  y = y / np.maximum(envelope, 1e-11)
  start = n_fft // 2
  if start + length > total:
    raise ValueError(f"istft: {n_frames} frames give {total - start} samples, not {length}")
  return y[..., start:start + length]


def _clamped_abs(real: jax.Array, imag: jax.Array) -> jax.Array:
  """max(|z|, 1e-10), the divisor of torchlibrosa's `magphase`, written √max(|z|², 1e-20) so
  that its gradient stays finite at z = 0."""
  return jnp.sqrt(jnp.maximum(real ** 2 + imag ** 2, 1e-20))


# ----------------------------------------------------------------------------- blocks
def _film(features: int, name: str, dtype) -> nn.Dense:
  return nn.Dense(features, kernel_init=xavier, dtype=dtype, name=name)


class ConvBlockRes(nn.Module):
  """x + conv2(lrelu(bn2(conv1(lrelu(bn1(x) + β1))) + β2)), with a 1×1 conv (bias) on the
  residual path when the width changes. 3×3 convolutions, zero padding 1, no bias.
  (B, T, F, Cin), condition (B, D) → (B, T, F, features)."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, condition, train: bool):
    cin = x.shape[-1]

    def norm_film_act(y, name, beta_name):
      y = BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, dtype=self.dtype,
                    name=name)(y)
      beta = _film(y.shape[-1], beta_name, self.dtype)(condition)[:, None, None, :]
      return nn.leaky_relu(y + beta, LEAKY_SLOPE)

    def conv(y, name):
      return nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                     kernel_init=xavier, dtype=self.dtype, name=name)(y)

    h = conv(norm_film_act(x, "bn1", "beta1"), "conv1")
    h = conv(norm_film_act(h, "bn2", "beta2"), "conv2")
    if cin != self.features:
      x = nn.Conv(self.features, (1, 1), kernel_init=xavier, dtype=self.dtype,
                  name="shortcut")(x)
    return x + h


class EncoderBlock(nn.Module):
  """ConvBlockRes, then average pooling by `pool` (time, frequency). Returns (pooled, unpooled)."""
  features: int
  pool: Tuple[int, int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, condition, train: bool):
    x = ConvBlockRes(self.features, self.dtype, name="conv_block1")(x, condition, train)
    pooled = nn.avg_pool(x, self.pool, strides=self.pool) if self.pool != (1, 1) else x
    return pooled, x


class DecoderBlock(nn.Module):
  """lrelu(bn1(x) + β1) → transposed conv (kernel = stride = `up`, no bias) → concat skip on
  channels → ConvBlockRes. (B, T, F, Cin), skip (B, T·up_t, F·up_f, features) → same as skip."""
  features: int
  up: Tuple[int, int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, skip, condition, train: bool):
    x = BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, dtype=self.dtype,
                  name="bn1")(x)
    x = nn.leaky_relu(x + _film(x.shape[-1], "beta1", self.dtype)(condition)[:, None, None, :],
                      LEAKY_SLOPE)
    x = nn.ConvTranspose(self.features, self.up, strides=self.up, padding="VALID",
                         use_bias=False, kernel_init=xavier, dtype=self.dtype, name="conv1")(x)
    x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
    return ConvBlockRes(self.features, self.dtype, name="conv_block2")(x, condition, train)


class LabelEmbedding(nn.Module):
  """Linear(K·n_classes → D)–LayerNorm–ReLU–Linear(D → D)–LayerNorm–ReLU. (B, K·n) → (B, D)."""
  features: int = 512
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, labels):
    x = labels
    for i in (1, 2):
      x = nn.Dense(self.features, kernel_init=torch_default,
                   bias_init=_torch_bias_init(x.shape[-1]), dtype=self.dtype, name=f"fc{i}")(x)
      x = nn.relu(nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=self.dtype,
                               name=f"ln{i}")(x))
    return x


# ----------------------------------------------------------------------------- model
class ResUNetK(nn.Module):
  """Label-queried separator: K sources from a multichannel mixture and K class labels.

  Call: `model.apply(variables, mixture, label_vector, train=False)` (train=True needs
  `mutable=["batch_stats"]`).
    mixture: (B, in_channels, L) waveform at 32 kHz, L > n_fft // 2.
    label_vector: (B, num_sources·n_classes): num_sources one-hot rows, silence = all zeros.
  Returns (B, num_sources, 1, L) float32: the separated dry sources, zero for silent rows.
  """
  n_fft: int = 1024
  hop: int = 160
  in_channels: int = 4
  num_sources: int = 3
  n_classes: int = 18
  condition_size: int = 512
  widths: Sequence[int] = (32, 64, 128, 256, 384, 384)
  dtype: Any = jnp.float32

  # Encoder pooling (time, frequency): ×2 five times, then frequency only; the decoder mirrors it.
  POOLS = ((2, 2), (2, 2), (2, 2), (2, 2), (2, 2), (1, 2))

  @nn.compact
  def __call__(self, mixture: jax.Array, label_vector: jax.Array, train: bool = False):
    batch, channels, length = mixture.shape
    if channels != self.in_channels:
      raise ValueError(f"ResUNetK: mixture has {channels} channels, expected {self.in_channels}")
    if label_vector.shape != (batch, self.num_sources * self.n_classes):
      raise ValueError(f"ResUNetK: label_vector {label_vector.shape}, expected "
                       f"{(batch, self.num_sources * self.n_classes)}")
    if len(self.widths) != len(self.POOLS):
      raise ValueError(f"ResUNetK: widths needs {len(self.POOLS)} entries, got {self.widths}")
    freq_down = int(np.prod([p[1] for p in self.POOLS]))
    if (self.n_fft // 2) % freq_down:
      raise ValueError(f"ResUNetK: n_fft // 2 must be a multiple of {freq_down}")

    # Presence of each source: any nonzero entry in its label row.
    labels = label_vector.reshape(batch, self.num_sources, self.n_classes)
    source_mask = (jnp.sum(labels, axis=-1) != 0).astype(jnp.float32)          # (B, K)
    condition = LabelEmbedding(self.condition_size, self.dtype,
                               name="label_embedding")(label_vector)

    real, imag = stft(mixture, self.n_fft, self.hop)                             # (B, C, T, F)
    # The reference's magnitude clamps |X|² at 1e-10, so |X| ≥ 1e-5 (its bn0 sees the clamp).
    mag = jnp.sqrt(jnp.maximum(real ** 2 + imag ** 2, 1e-10))
    cos_in, sin_in = real / mag, imag / mag
    frames = mag.shape[2]

    # bn0 normalises each frequency bin over (batch, channels, time).
    x = BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, name="bn0")(mag)
    x = jnp.transpose(x, (0, 2, 3, 1))                                           # (B, T, F, C)
    time_down = int(np.prod([p[0] for p in self.POOLS]))
    padded = -(-frames // time_down) * time_down
    x = jnp.pad(x, ((0, 0), (0, padded - frames), (0, 0), (0, 0)))[:, :, :-1]   # F → n_fft/2
    x = nn.Conv(self.widths[0], (1, 1), kernel_init=xavier, dtype=self.dtype,
                name="pre_conv")(x.astype(self.dtype))

    skips = []
    for i, (width, pool) in enumerate(zip(self.widths, self.POOLS)):
      x, unpooled = EncoderBlock(width, pool, self.dtype, name=f"encoder_block{i + 1}")(
          x, condition, train)
      skips.append(unpooled)
    x, _ = EncoderBlock(self.widths[-1], (1, 1), self.dtype, name="conv_block7a")(
        x, condition, train)
    for i, (skip, pool) in enumerate(zip(reversed(skips), reversed(self.POOLS))):
      x = DecoderBlock(skip.shape[-1], pool, self.dtype, name=f"decoder_block{i + 1}")(
          x, skip, condition, train)

    x = nn.Conv(self.in_channels * 3 * self.num_sources, (1, 1), kernel_init=xavier,
                dtype=self.dtype, name="after_conv")(x)
    # Back to the STFT's grid: a zero Nyquist bin, the time padding cropped.
    x = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, 0), (0, 1), (0, 0)))[:, :frames]
    # Channel (k·C + c)·3 + j holds mask part j (|M|, Re, Im) of source k, input channel c.
    x = x.reshape(batch, frames, x.shape[2], self.num_sources, self.in_channels, 3)
    mask_mag = jax.nn.sigmoid(x[..., 0])                                         # (B,T,F,K,C)
    mask_re, mask_im = jnp.tanh(x[..., 1]), jnp.tanh(x[..., 2])
    mask_abs = _clamped_abs(mask_re, mask_im)
    mask_cos, mask_sin = mask_re / mask_abs, mask_im / mask_abs

    def per_source(a):   # (B, C, T, F) → (B, T, F, 1, C)
      return jnp.transpose(a, (0, 2, 3, 1))[:, :, :, None, :]

    cos_in, sin_in = per_source(cos_in), per_source(sin_in)
    out_cos = cos_in * mask_cos - sin_in * mask_sin     # cos(∠X + ∠M)
    out_sin = sin_in * mask_cos + cos_in * mask_sin     # sin(∠X + ∠M)
    out_mag = nn.relu(per_source(mag) * mask_mag)

    # One 1×1 conv (with bias) merges the input channels of Re and of Im.
    out_conv = nn.Conv(1, (1, 1), kernel_init=torch_default,
                       bias_init=_torch_bias_init(self.in_channels), name="out_conv")

    def merge(a):        # (B, T, F, K, C) → (B, K, T, F)
      a = jnp.transpose(a, (0, 3, 1, 2, 4)).reshape(batch * self.num_sources, frames, -1,
                                                     self.in_channels)
      return out_conv(a)[..., 0].reshape(batch, self.num_sources, frames, -1)

    out_real, out_imag = merge(out_mag * out_cos), merge(out_mag * out_sin)
    waveform = istft(out_real, out_imag, self.n_fft, self.hop, length)           # (B, K, L)
    return (waveform * source_mask[:, :, None])[:, :, None, :]
