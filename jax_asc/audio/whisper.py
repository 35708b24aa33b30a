"""Whisper's log-mel frontend in JAX (the input of Whisper and of the Qwen2-Audio encoder).

What `transformers.WhisperFeatureExtractor(feature_size=128)` computes (its torch path; read, not
copied), facts in `../shared/reference/models_and_frontends.md` §4 ("Whisper"):

1. every clip is cut or zero-padded to one chunk of `chunk_samples` samples (30 s at 16 kHz);
2. STFT: periodic Hann window of n_fft = 400, hop 160, centred reflect padding (torch.stft's
   defaults); the last frame is dropped, so a chunk gives exactly `chunk_frames` frames (3000);
3. power |X|², Slaney mel filterbank with Slaney area normalisation over 0 … sample_rate / 2;
4. log10(max(mel, 1e-10)), floored at (its per-example maximum − 8), then (x + 4) / 4.

The frame count of the clip's samples, `valid_frames` = ceil(min(length, chunk_samples) / hop),
is the sum of HF's `attention_mask` (the sample mask taken every hop-th sample); Qwen2-Audio's
encoder masks its attention with it (`models.qwen_audio`).

The STFT and mel projection are `audio.frontends`' (one implementation of each in the package):
a `MelSettings` with these values gives the same spectrum and filterbank.

Shapes: waveforms (B, S) float32 at `sample_rate`; features (B, n_mels, chunk_frames) float32.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jax_asc.audio import frontends

LOG_FLOOR = 1e-10       # log10(max(mel, 1e-10))
DYNAMIC_RANGE = 8.0     # decades kept below each example's maximum


@dataclasses.dataclass(frozen=True)
class WhisperSettings:
  """Whisper frontend settings: rates in Hz, lengths in samples, the chunk in frames.

  The defaults are Whisper-large-v3's / Qwen2-Audio's: 128 mels, a 30-s chunk of 3000 frames.
  """
  sample_rate: int = 16000
  n_fft: int = 400
  hop: int = 160
  n_mels: int = 128
  chunk_frames: int = 3000

  def __post_init__(self):
    for name in ("sample_rate", "n_fft", "hop", "n_mels", "chunk_frames"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"WhisperSettings.{name} must be a positive int, got {value!r}")
    if self.chunk_samples <= self.n_fft // 2:
      raise ValueError(f"WhisperSettings: a chunk of {self.chunk_samples} samples is too short "
                       f"for the reflect padding of n_fft // 2 = {self.n_fft // 2}")

  @property
  def chunk_samples(self) -> int:
    """Samples in one chunk: chunk_frames · hop (480000 for 30 s at 16 kHz)."""
    return self.chunk_frames * self.hop

  def to_dict(self) -> dict:
    """The settings as a plain dict (`WhisperSettings(**d)` rebuilds them)."""
    return dataclasses.asdict(self)


def _mel_settings(settings: WhisperSettings) -> frontends.MelSettings:
  """The `frontends.MelSettings` computing Whisper's mel power spectrogram."""
  return frontends.MelSettings(
      sample_rate=settings.sample_rate, n_fft=settings.n_fft, win_length=settings.n_fft,
      hop_length=settings.hop, window="hann_periodic", center=True, pad_mode="reflect",
      n_mels=settings.n_mels, fmin=0.0, fmax=None, mel_scale="slaney", mel_norm="slaney",
      power=2.0)


def mel_filters(settings: WhisperSettings = WhisperSettings()) -> np.ndarray:
  """Whisper's mel filterbank (n_fft // 2 + 1, n_mels), float64: Slaney mel scale, Slaney area
  normalisation, 0 … sample_rate / 2 Hz (HF's `mel_filter_bank(norm="slaney",
  mel_scale="slaney")`, which `WhisperFeatureExtractor` builds)."""
  return frontends.static_mel_filterbank(_mel_settings(settings))


def valid_frames(lengths, settings: WhisperSettings = WhisperSettings()):
  """Frames of a chunk that hold a clip of `lengths` samples: ceil(min(length, chunk) / hop),
  int32 (NumPy in, NumPy out; JAX arrays and tracers give JAX arrays)."""
  xp = jnp if isinstance(lengths, jax.Array) else np
  n = xp.clip(xp.asarray(lengths).astype(xp.int32), 0, settings.chunk_samples)
  return ((n + settings.hop - 1) // settings.hop).astype(xp.int32)


def log_mel(waveform: jax.Array, settings: WhisperSettings = WhisperSettings(),
            lengths: Optional[jax.Array] = None) -> Tuple[jax.Array, jax.Array]:
  """Whisper's normalised log-mel features of a batch of clips, and their valid frames.

  Args:
    waveform: (B, S) float32 at `settings.sample_rate`. Each row is cut or zero-padded to
      `settings.chunk_samples`.
    settings: the frontend (static under `jit`).
    lengths: (B,) int, the valid samples of each row (may be traced); samples at or beyond a
      row's length are zeroed, as HF pads a shorter clip. None: all S samples.

  Returns:
    features: (B, n_mels, chunk_frames) float32, ((max(log10 mel, max − 8)) + 4) / 4 with the
      maximum taken per example over all its mels and frames (padding included, as HF does).
    valid_frames: (B,) int32, ceil(min(length, chunk_samples) / hop) (HF's
      `attention_mask.sum(-1)`).
  """
  waveform = jnp.asarray(waveform)
  if waveform.ndim != 2:
    raise ValueError(f"whisper.log_mel takes waveforms (B, samples), got shape {waveform.shape}")
  batch, samples = waveform.shape
  n = settings.chunk_samples
  x = waveform.astype(jnp.float32)
  x = x[:, :n] if samples >= n else jnp.pad(x, ((0, 0), (0, n - samples)))
  if lengths is None:
    lengths = jnp.full((batch,), min(samples, n), jnp.int32)
  else:
    lengths = jnp.asarray(lengths)
    if lengths.shape != (batch,):
      raise ValueError(f"whisper.log_mel: lengths must have shape ({batch},), got {lengths.shape}")
    lengths = jnp.clip(lengths.astype(jnp.int32), 0, min(samples, n))
    x = jnp.where(jnp.arange(n)[None, :] < lengths[:, None], x, 0.0)
  mel = frontends.mel_spectrogram(x, _mel_settings(settings))[:, :, :-1]   # (B, n_mels, frames)
  log_spec = jnp.log10(jnp.maximum(mel, LOG_FLOOR))
  floor = jnp.max(log_spec, axis=(1, 2), keepdims=True) - DYNAMIC_RANGE
  features = (jnp.maximum(log_spec, floor) + 4.0) / 4.0
  return features.astype(jnp.float32), valid_frames(lengths, settings)
