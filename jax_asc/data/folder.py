"""A folder of audio files as prediction input, brought to what a trained run expects.

`find_audio(folder)` lists every `.wav`, `.flac` and `.ogg` file under a folder (recursively,
sorted, paths relative to the folder). `read_clip` reads one at any sample rate and channel
count and converts it to the run's rate (with the run's resampler) and channels: a run trained on
mono audio hears the mean of the file's channels; a multi-channel run needs files with exactly its
channel count. `windows` cuts a clip into the run's clip length: a shorter clip is zero-padded at
the end; a longer one is cut into windows at 0, L, 2L, … and, where L does not divide its length,
one last window that ends at the clip's end (so no sample is left out). `read_windows` does this
for many files and lists every file it could not use with the reason, never dropping one silently.
"""
from __future__ import annotations

import collections
import os
from typing import List, Sequence, Tuple

import numpy as np

from jax_asc.data import audio_io

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


def find_audio(folder: str) -> List[str]:
  """Paths (relative to `folder`, '/'-separated, sorted) of the audio files under `folder`,
  linked folders included (each real folder once)."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"audio folder {folder!r} does not exist or is not a folder")
  found, seen = [], set()
  for dirpath, dirnames, names in os.walk(folder, followlinks=True):
    real = os.path.realpath(dirpath)
    if real in seen:          # a link back to a folder already read
      dirnames[:] = []
      continue
    seen.add(real)
    dirnames.sort()
    for name in names:
      if name.lower().endswith(AUDIO_EXTENSIONS) and not name.startswith("."):
        found.append(os.path.relpath(os.path.join(dirpath, name), folder).replace(os.sep, "/"))
  if not found:
    raise FileNotFoundError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {folder!r}")
  return sorted(found)


def read_clip(path: str, *, sample_rate: int, channels: int,
              resampler: str = "sinc_hann") -> np.ndarray:
  """(channels, samples) float32 at `sample_rate` of one audio file of any rate and channel
  count; raises `audio_io.BadAudioError` naming the file for what cannot be used."""
  data, rate = audio_io.read_audio(path, keep_channels=True)
  if channels == 1:
    data = data.mean(axis=0, keepdims=True)
  elif data.shape[0] != channels:
    raise audio_io.BadAudioError(path, f"{data.shape[0]} channel(s); the run was trained on "
                                 f"{channels}-channel audio")
  return audio_io.resample(data, rate, sample_rate, resampler)


def windows(clip: np.ndarray, length: int) -> np.ndarray:
  """(W, channels, length) windows of a (channels, samples) clip (see the module docstring):
  W = 1 for a clip of at most `length` samples, else ceil(samples / length)."""
  if length <= 0:
    raise ValueError(f"window length must be positive, got {length}")
  samples = clip.shape[-1]
  if samples <= length:
    return np.pad(clip, ((0, 0), (0, length - samples)))[None]
  starts = list(range(0, samples - length + 1, length))
  if starts[-1] + length < samples:
    starts.append(samples - length)
  return np.stack([clip[:, s:s + length] for s in starts])


def read_windows(folder: str, names: Sequence[str], *, sample_rate: int, channels: int,
                 length: int, resampler: str = "sinc_hann"
                 ) -> Tuple[np.ndarray, np.ndarray, List[Tuple[str, str]]]:
  """(windows (W, channels, length) float32, owner (W,) int: the position in `names` each window
  comes from, bad [(name, reason)]) of the files `names` under `folder`."""
  parts, owner, bad = [], [], []
  for i, name in enumerate(names):
    try:
      clip = read_clip(os.path.join(folder, name), sample_rate=sample_rate, channels=channels,
                       resampler=resampler)
    except audio_io.BadAudioError as error:
      bad.append((name, error.problem))
      continue
    cut = windows(clip, length)
    parts.append(cut)
    owner.extend([i] * len(cut))
  stacked = (np.concatenate(parts).astype(np.float32) if parts
             else np.zeros((0, channels, length), np.float32))
  return stacked, np.asarray(owner, np.int64), bad


def read_device_map(path: str) -> dict:
  """{filename: device} of a TAB- or comma-separated list with the columns `filename` and
  `device_id` (the DCASE 2025 evaluation list, `evaluation_setup/fold1_test.csv`)."""
  from jax_asc.data import formats
  if not os.path.exists(path):
    raise FileNotFoundError(f"device map {path!r} not found")
  with open(path, encoding="utf-8") as f:
    first = f.readline()
  delimiter = "\t" if "\t" in first else ","
  rows = formats._read_table(path, delimiter=delimiter, header=True,
                             columns=("filename", "device_id"))
  return {row["filename"]: row["device_id"] for row in formats._unique(rows, "filename", path)
          .values()}


def match_device_map(names: Sequence[str], device_map: dict) -> Tuple[List[str], List[str]]:
  """(the device of each of `names`, "" where the map lacks it; the map's filenames matched by
  no name). A name matches a listed filename equal to it, else one with the same base name when
  that base name is unique both in the list and among `names` (a list written relative to the
  folder above)."""
  by_base: dict = {}
  for listed in device_map:
    by_base.setdefault(os.path.basename(listed), []).append(listed)
  name_bases = collections.Counter(os.path.basename(name) for name in names)
  devices, used = [], set()
  for name in names:
    listed = name if name in device_map else None
    base = os.path.basename(name)
    if listed is None and name_bases[base] == 1 and len(by_base.get(base, [])) == 1:
      listed = by_base[base][0]
    devices.append(device_map[listed] if listed is not None else "")
    if listed is not None:
      used.add(listed)
  return devices, [listed for listed in device_map if listed not in used]
