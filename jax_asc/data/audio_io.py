"""Reading and validating audio files: every problem is an error that names the file.

`read_audio` checks what a dataset promises (sample rate, channel count) and what every clip must
be (readable, non-empty, finite); `resample` converts once, at load time (librosa / soxr, the
same resampler for every file).
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import soundfile


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
               expected_channels: Optional[int] = None) -> tuple:
  """(waveform float32 (samples,) mono, sample rate) of a wav/flac/ogg file.

  Multi-channel files are averaged to mono after the channel check. Raises `BadAudioError` for a
  missing, empty, truncated or corrupt file, NaN or infinite samples, or a sample rate / channel
  count other than the expected one.
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
  return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0], sample_rate


def resample(waveform: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
  """Resamples a mono waveform (librosa's default soxr_hq); unchanged when the rates match."""
  if source_rate == target_rate:
    return waveform.astype(np.float32)
  import librosa
  return librosa.resample(waveform.astype(np.float32), orig_sr=source_rate,
                          target_sr=target_rate).astype(np.float32)


def fit_length(waveform: np.ndarray, num_samples: int) -> np.ndarray:
  """Zero-pads or truncates to `num_samples` (resampling can be off by a sample)."""
  if len(waveform) >= num_samples:
    return waveform[:num_samples]
  return np.pad(waveform, (0, num_samples - len(waveform)))
