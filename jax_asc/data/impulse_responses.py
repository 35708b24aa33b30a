"""Device impulse responses (DIR) from a folder, e.g. the MicIRP set of the DCASE systems."""
from __future__ import annotations

import glob
import os

import numpy as np

from jax_asc.data import audio_io


def load_impulse_responses(folder: str, sample_rate: int, resampler: str = "soxr_hq") -> tuple:
  """(irs (M, L_max) float32 zero-padded at the end, names) of every `*.wav` below `folder`.

  Sorted by path (a fixed index → IR mapping, as the d23 reference), mixed to mono and resampled
  once to `sample_rate` with `resampler` (`audio_io.RESAMPLERS`; default soxr_hq: the d23
  reference loads them with `librosa.load(sr=32000)`, librosa 0.10's soxr_hq; the d24/25
  baselines use no DIR); no normalisation. Raises naming the folder when it holds no wav file.
  """
  audio_io.check_resampler(resampler, "waveform_augment.dir_resampler")
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"impulse-response folder {folder!r} does not exist")
  paths = sorted(glob.glob(os.path.join(folder, "**", "*.wav"), recursive=True))
  if not paths:
    raise FileNotFoundError(f"impulse-response folder {folder!r} holds no .wav files")
  irs = []
  for path in paths:
    waveform, rate = audio_io.read_audio(path)
    irs.append(audio_io.resample(waveform, rate, sample_rate, resampler))
  length = max(len(ir) for ir in irs)
  bank = np.zeros((len(irs), length), np.float32)
  for i, ir in enumerate(irs):
    bank[i, :len(ir)] = ir
  return bank, [os.path.relpath(p, folder) for p in paths]
