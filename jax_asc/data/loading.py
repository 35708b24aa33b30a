"""Manifest → `Split`: read, validate and resample every clip once, cached on disk.

The cache (`<cache_dir>/<dataset>/<split>-<fingerprint>/`) holds the resampled waveforms
(N, C, S) as a float32 (or float16) `.npy` (memory-mapped when read back, so a full TAU set need
not fit in memory), the metadata columns and the list of skipped files. C is 1 (channels mixed
to mono) unless `keep_channels` asks for the dataset's channels. The fingerprint covers the file
list with sizes and modification times, the target rate, clip length, channels, resampler and
cache dtype, so a changed dataset or setting is read anew.

Bad files raise `BadAudioError` naming the file; with `skip_bad_files=True` they are left out,
counted, and listed in `Split.skipped` (which the stages write to the workdir).
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
from typing import List, Tuple

import numpy as np

from jax_asc.data import audio_io
from jax_asc.data.dataset import Split
from jax_asc.data.formats import Manifest

CACHE_VERSION = 2   # 2: waveform (N, C, S), column recording_device
CACHE_DTYPES = ("float16", "float32")
LENGTH_TOLERANCE = 0.01   # fraction of the nominal clip length a fixed-length file may differ


def _fingerprint(manifest: Manifest, sample_rate: int, skip_bad_files: bool,
                 cache_dtype: str, resampler: str, channels: int) -> str:
  h = hashlib.sha256()
  h.update(json.dumps([CACHE_VERSION, manifest.dataset, manifest.split,
                       os.path.abspath(manifest.root), sample_rate, manifest.clip_seconds,
                       skip_bad_files, cache_dtype, resampler, channels]).encode())
  for ex in manifest.examples:
    try:
      stat = os.stat(ex.path)
      h.update(f"{ex.filename}|{ex.path}|{ex.label}|{ex.device}|{stat.st_size}|"
               f"{stat.st_mtime_ns}\n".encode())
    except FileNotFoundError:
      h.update(f"{ex.filename}|{ex.path}|missing\n".encode())
  return h.hexdigest()[:16]


def _load_one(manifest: Manifest, example, sample_rate: int, resampler: str,
              keep_channels: bool) -> np.ndarray:
  """One clip as (C, S) float32 at `sample_rate` (C = 1 unless `keep_channels`)."""
  waveform, native_rate = audio_io.read_audio(
      example.path, expected_sample_rate=manifest.sample_rate,
      expected_channels=manifest.channels, keep_channels=True)
  if not keep_channels:
    waveform = waveform.mean(axis=0, keepdims=True) if len(waveform) > 1 else waveform
  length = waveform.shape[-1]
  nominal = manifest.clip_seconds * native_rate
  seconds = length / native_rate
  too_long = length > nominal * (1 + LENGTH_TOLERANCE)
  too_short = length < nominal * (1 - LENGTH_TOLERANCE) and not manifest.variable_length
  if too_long or too_short:
    raise audio_io.BadAudioError(example.path, f"clip of {seconds:.3f} s, expected "
                                 f"{manifest.clip_seconds} s")
  waveform = audio_io.resample(waveform, native_rate, sample_rate, resampler)
  return audio_io.fit_length(waveform, int(round(manifest.clip_seconds * sample_rate)))


def load(manifest: Manifest, *, sample_rate: int, cache_dir: str,
         skip_bad_files: bool = False, workers: int = 0, cache_dtype: str = "float32",
         resampler: str = "sinc_hann", keep_channels: bool = False) -> Split:
  """The manifest's examples as a `Split` at `sample_rate` (read once, then from the cache).

  Columns: waveform (N, C, S), label, recording_device, filename, index, identifier.
  keep_channels: C = the dataset's channel count (`Manifest.channels`, checked per file);
  otherwise the channels are averaged (C = 1).

  cache_dtype: float32 (the resampler's output) or float16 (half the disk; its rounding noise,
  ~1e-4 of the clip's level, is white: it moves single DCASE25 log-mel bins of broadband clips by
  up to 0.4 nat and lifts empty bands, FSDD's above 4 kHz, by 0.25 nat on average;
  `benchmarks/data_parity.py`).
  Batches are float32 either way.
  resampler: `audio_io.RESAMPLERS` ("sinc_hann": the d24/25 reference's torchaudio resampler;
  "soxr_hq": librosa's, as the d23 reference's `librosa.load`).
  """
  if cache_dtype not in CACHE_DTYPES:
    raise ValueError(f"data.cache_dtype must be one of {CACHE_DTYPES}, got {cache_dtype!r}")
  audio_io.check_resampler(resampler, "data.resampler")
  channels = manifest.channels if keep_channels else 1
  key = _fingerprint(manifest, sample_rate, skip_bad_files, cache_dtype, resampler, channels)
  safe_split = manifest.split.replace("/", "_")
  folder = os.path.join(cache_dir, manifest.dataset, f"{safe_split}-{key}")
  done = os.path.join(folder, "done.json")
  if not os.path.exists(done):
    _build(manifest, folder, sample_rate, skip_bad_files, workers or min(os.cpu_count() or 1, 8),
           np.dtype(cache_dtype), resampler, keep_channels)
  with np.load(os.path.join(folder, "meta.npz")) as meta:
    arrays = {k: meta[k] for k in meta.files}
  with open(os.path.join(folder, "skipped.json")) as f:
    skipped = [tuple(item) for item in json.load(f)]
  if skipped:
    logging.warning("%s/%s: %d bad file(s) skipped (listed in the run's skipped_files.json)",
                    manifest.dataset, manifest.split, len(skipped))
  columns = dict(arrays, waveform=np.load(os.path.join(folder, "waveform.npy"), mmap_mode="r"))
  return Split(name=manifest.split, columns=columns, classes=tuple(manifest.classes),
               devices=tuple(manifest.devices), sample_rate=sample_rate, skipped=skipped,
               dataset=manifest.dataset)


def _build(manifest: Manifest, folder: str, sample_rate: int, skip_bad_files: bool,
           workers: int, dtype: np.dtype, resampler: str, keep_channels: bool) -> None:
  if not manifest.examples:
    raise ValueError(f"{manifest.dataset}/{manifest.split}: the split lists no files")
  os.makedirs(folder, exist_ok=True)
  num_samples = int(round(manifest.clip_seconds * sample_rate))
  channels = manifest.channels if keep_channels else 1
  path = os.path.join(folder, "waveform.npy")
  tmp_path = path + ".partial.npy"
  waves = np.lib.format.open_memmap(tmp_path, mode="w+", dtype=dtype,
                                    shape=(len(manifest.examples), channels, num_samples))
  kept: List[int] = []
  skipped: List[Tuple[str, str]] = []

  def work(i):
    try:
      return i, _load_one(manifest, manifest.examples[i], sample_rate, resampler,
                          keep_channels), None
    except audio_io.BadAudioError as error:
      if not skip_bad_files:
        raise
      return i, None, (os.path.relpath(error.path, manifest.root), error.problem)

  chunk = 256   # bounded: finished clips are written before more are read
  with concurrent.futures.ThreadPoolExecutor(max(workers, 1)) as pool:
    for start in range(0, len(manifest.examples), chunk):
      stop = min(start + chunk, len(manifest.examples))
      for i, waveform, problem in pool.map(work, range(start, stop)):
        if problem is not None:
          skipped.append(problem)
          continue
        waves[len(kept)] = waveform
        kept.append(i)
  if not kept:
    raise ValueError(f"{manifest.dataset}/{manifest.split}: every file was bad ({len(skipped)})")
  waves.flush()
  del waves
  if len(kept) == len(manifest.examples):
    os.replace(tmp_path, path)
  else:   # keep only the rows written: skipped files leave no gap
    full = np.load(tmp_path, mmap_mode="r")
    final = np.lib.format.open_memmap(path, mode="w+", dtype=dtype,
                                      shape=(len(kept), channels, num_samples))
    final[:] = full[:len(kept)]
    final.flush()
    del final, full
    os.remove(tmp_path)
  examples = [manifest.examples[i] for i in kept]
  device_ids = [list(manifest.devices).index(e.device) for e in examples]
  np.savez(os.path.join(folder, "meta.npz"),
           label=np.array([e.label for e in examples], np.int32),
           recording_device=np.array(device_ids, np.int32),
           filename=np.array([e.filename for e in examples]),
           identifier=np.array([e.identifier for e in examples]),
           index=np.array(kept, np.int32))
  with open(os.path.join(folder, "skipped.json"), "w") as f:
    json.dump(skipped, f, indent=1)
  with open(os.path.join(folder, "done.json"), "w") as f:
    json.dump({"dataset": manifest.dataset, "split": manifest.split, "examples": len(kept),
               "skipped": len(skipped), "sample_rate": sample_rate, "resampler": resampler,
               "cache_dtype": str(dtype), "channels": channels,
               "classes": list(manifest.classes), "devices": list(manifest.devices)}, f)
