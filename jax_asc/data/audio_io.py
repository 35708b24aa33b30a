"""Reading and validating audio files: every problem is an error that names the file.

`read_audio` checks what a dataset promises (sample rate, channel count) and what every clip must
be (readable, non-empty, finite); `resample` converts once, at load time, with one resampler for
every file (`RESAMPLERS`: the d24/25 reference's windowed sinc, or librosa's soxr_hq).
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import soundfile

from jax_asc.audio import resample as resample_lib


class BadAudioError(ValueError):
  """A file that cannot be used as it is; the message names the file and what was expected."""

  def __init__(self, path: str, problem: str):
    super().__init__(f"{path}: {problem}")
    self.path = path
    self.problem = problem


def _wav_missing_bytes(path: str) -> int:
  """Bytes a RIFF/WAVE file's `data` chunk declares beyond the end of the file (0 if complete).

  libsndfile silently reads what is there, so a cut-off download would pass unnoticed.
  """
  with open(path, "rb") as f:
    header = f.read(12)
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
      return 0
    size = os.fstat(f.fileno()).st_size
    while True:
      chunk = f.read(8)
      if len(chunk) < 8:
        return 0
      length = int.from_bytes(chunk[4:8], "little")
      if chunk[:4] == b"data":
        return max(0, f.tell() + length - size)
      f.seek(length + (length & 1), os.SEEK_CUR)


def read_audio(path: str, *, expected_sample_rate: Optional[int] = None,
               expected_channels: Optional[int] = None, keep_channels: bool = False) -> tuple:
  """(waveform float32, sample rate) of a wav/flac/ogg file: (samples,) mono, or with
  `keep_channels` (channels, samples) as the file has them.

  Without `keep_channels`, multi-channel files are averaged to mono after the channel check.
  Raises `BadAudioError` for a missing, empty, truncated or corrupt file, NaN or infinite
  samples, or a sample rate / channel count other than the expected one.
  """
  if not os.path.exists(path):
    raise BadAudioError(path, "file listed in the metadata but missing on disk")
  if os.path.getsize(path) == 0:
    raise BadAudioError(path, "empty file (0 bytes)")
  missing = _wav_missing_bytes(path)
  if missing:
    raise BadAudioError(path, f"truncated: the header declares {missing} more bytes of audio "
                        "than the file holds")
  try:
    info = soundfile.info(path)
    data, sample_rate = soundfile.read(path, dtype="float32", always_2d=True)
  except (RuntimeError, soundfile.LibsndfileError, ValueError) as error:
    raise BadAudioError(path, f"unreadable or corrupt audio ({error})") from error
  if info.frames and data.shape[0] < info.frames:
    raise BadAudioError(path, f"truncated: header says {info.frames} frames, read {data.shape[0]}")
  if data.shape[0] == 0:
    raise BadAudioError(path, "no samples")
  if expected_sample_rate is not None and sample_rate != expected_sample_rate:
    raise BadAudioError(path, f"sample rate {sample_rate} Hz, expected {expected_sample_rate} Hz")
  if expected_channels is not None and data.shape[1] != expected_channels:
    raise BadAudioError(path, f"{data.shape[1]} channel(s), expected {expected_channels}")
  if not np.all(np.isfinite(data)):
    raise BadAudioError(path, "contains NaN or infinite samples")
  if keep_channels:
    return np.ascontiguousarray(data.T), sample_rate
  return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0], sample_rate


# "sinc_hann": torchaudio's `Resample` / `functional.resample` with its defaults (sinc_interp_hann,
# lowpass_filter_width 6, rolloff 0.99), which the DCASE 2024/2025 baselines apply 44.1 → 32 kHz.
# "soxr_hq": librosa.resample's default (libsoxr, high quality); `librosa.load(sr=…)` of the d23
# reference (its MicIRP impulse responses) resamples with it.
RESAMPLERS = ("sinc_hann", "soxr_hq")


def check_resampler(method: str, key: str = "data.resampler") -> str:
  if method not in RESAMPLERS:
    raise ValueError(f"{key} must be one of {RESAMPLERS}, got {method!r}")
  return method


def resample(waveform: np.ndarray, source_rate: int, target_rate: int,
             method: str = "sinc_hann") -> np.ndarray:
  """Resamples waveforms (..., samples) to float32; unchanged (as float32) when the rates match.

  method "sinc_hann": band-limited windowed-sinc interpolation, the torchaudio `sinc_interp_hann`
  resampler of the d24/25 reference (width 6, rolloff 0.99; same kernel, zero padding and output
  length ceil(samples · target / source)); "soxr_hq": librosa / libsoxr.
  """
  check_resampler(method, "resample method")
  if source_rate == target_rate:
    return np.asarray(waveform, np.float32)
  if method == "soxr_hq":
    import librosa
    return librosa.resample(np.asarray(waveform, np.float32), orig_sr=source_rate,
                            target_sr=target_rate).astype(np.float32)
  return sinc_resample(waveform, source_rate, target_rate)


def sinc_resample(waveform: np.ndarray, source_rate: int, target_rate: int, *,
                  lowpass_filter_width: int = 6, rolloff: float = 0.99) -> np.ndarray:
  """Windowed-sinc (Hann) resampling of (..., samples) → float32 (..., ceil(samples·new/orig)).

  Polyphase: the input, zero-padded by `pad` before and `pad + orig` after, is read in blocks of
  `orig` samples; block m gives outputs m·new … m·new + new − 1, output j of a block the dot
  product of 2·pad + 1 inputs with phase j's taps (44.1 → 32 kHz: 441 → 320, 19 taps).
  """
  orig, new = resample_lib.reduced_rates(source_rate, target_rate)
  x = np.asarray(waveform, np.float32)
  if orig == new:
    return x.copy()
  taps, start, pad = resample_lib.sinc_phases(orig, new, int(lowpass_filter_width),
                                              float(rolloff))
  lead, length = x.shape[:-1], x.shape[-1]
  out_length = -(-new * length // orig)
  blocks = -(-out_length // new)
  padded = np.pad(x.reshape(-1, length), ((0, 0), (pad, pad + orig)))
  windows = np.lib.stride_tricks.sliding_window_view(padded, taps.shape[1], axis=1)
  first = (np.arange(blocks) * orig)[:, None] + start[None, :]   # (blocks, new)
  y = np.einsum("bmnr,nr->bmn", windows[:, first], taps)
  return y.reshape(*lead, blocks * new)[..., :out_length]


def fit_length(waveform: np.ndarray, num_samples: int) -> np.ndarray:
  """Zero-pads or truncates the last axis to `num_samples` (resampling can be off by a
  sample)."""
  length = waveform.shape[-1]
  if length >= num_samples:
    return waveform[..., :num_samples]
  return np.pad(waveform, [(0, 0)] * (waveform.ndim - 1) + [(0, num_samples - length)])
