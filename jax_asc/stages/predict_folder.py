"""Scene labels for a folder of audio from a trained run (`predict_folder`; the command line is
jax_asc/predict.py).

    python -m jax_asc.predict --workdir RUN --audio DIR --out predictions.csv
        [--checkpoint latest|best|soup] [--device-map LIST] [--fp16] [--batch-size N]
        [--tflite RUN/export/model_<format>.tflite]

Every `.wav`, `.flac` and `.ogg` file under DIR (recursively) is read at whatever sample rate and
channel count it has, resampled to the run's rate with the run's resampler (`data.resampler`),
mixed to mono for a mono run, and cut into the run's clip length (jax_asc/data/folder.py: a
shorter file is zero-padded, a longer one is cut into windows whose logits are averaged).

Output: `--out`, TAB-separated `filename, scene_label, <one probability per class>` (the DCASE
2025 submission layout; filenames relative to DIR), one row per readable file in sorted order.
Files that cannot be used (unreadable, empty, NaN samples, a channel count a multi-channel run
cannot take, listed in the device map but absent) are printed and written with the reason to
`<out>.unreadable.tsv`; none is dropped silently. A folder where no file can be used is an
error (after listing why).

`--device-map`: a TAB- or comma-separated list with `filename` and `device_id` (the DCASE 2025
evaluation list). Each file then goes to the device-specific model of its device (stage
finetune_device of the run, `RUN/devices/<device>/`, last checkpoint) and `unknown` to the run's
own checkpoint; a device without a fine-tuned model, or a file the list lacks, is an error.

`--tflite`: the exported LiteRT model (stage export) runs in the LiteRT interpreter instead of
the checkpoint, one window at a time; a model exported without its frontend is chained after the
`frontend.tflite` beside it. With `evaluate.use_ema` the run's EMA parameters predict.

The run's classes, devices, rate and clip length come from `RUN/data.json` (written by stage
train); a run older than that record loads its training split to learn them.
"""
from __future__ import annotations

import csv
import os
import time
from typing import List, Optional, Sequence

import numpy as np


def _batches_of(items: Sequence, size: int):
  for start in range(0, len(items), size):
    yield items[start:start + size]


class _Model:
  """One checkpoint of the run, predicting logits of windows (built on first use)."""

  def __init__(self, config, data: dict, workdir: str, which: str, dtype):
    self.config, self.data, self.workdir, self.which, self.dtype = (
        config, data, workdir, which, dtype)
    self._inference = None

  def logits(self, windows: np.ndarray, devices: np.ndarray) -> np.ndarray:
    from jax_asc.stages import common
    split = _windows_split(windows, devices, self.data)
    if self._inference is None:
      variables, _ = common.restore_variables(self.config, self.workdir, self.which)
      self._inference = common.Inference(self.config, split, variables, dtype=self.dtype,
                                         use_ema=self.config.evaluate.use_ema)
    return self._inference.logits(split)


class _LiteRTModel:
  """An exported flatbuffer (stage export) predicting logits of windows one at a time; a model
  exported with its frontend separate is chained after the `frontend.tflite` beside it."""

  def __init__(self, path: str, data: dict):
    from jax_asc.stages import litert
    if not os.path.exists(path):
      raise FileNotFoundError(f"--tflite {path}: no such file (stage export writes "
                              "<workdir>/export/model_<format>.tflite)")
    with open(path, "rb") as f:
      self.model = litert.Interpreter(f.read())
    waveform_shape = (1, int(data["channels"]), int(data["num_samples"]))
    self.frontend = None
    if self.model.input_shape != waveform_shape:
      frontend = os.path.join(os.path.dirname(path), "frontend.tflite")
      if not os.path.exists(frontend):
        raise ValueError(f"--tflite {path} takes inputs of shape {self.model.input_shape}, not "
                         f"the run's waveform {waveform_shape}, and there is no frontend.tflite "
                         "beside it (export with export.frontend='separate' writes one)")
      with open(frontend, "rb") as f:
        self.frontend = litert.Interpreter(f.read())
      if self.frontend.input_shape != waveform_shape:
        raise ValueError(f"{frontend} takes inputs of shape {self.frontend.input_shape}, "
                         f"the run's waveform is {waveform_shape}")
    width = tuple(int(d) for d in self.model.output["shape"])
    if width != (1, len(data["classes"])):
      raise ValueError(f"--tflite {path} gives outputs of shape {width}; the run has "
                       f"{len(data['classes'])} classes (is it this run's export?)")

  def logits(self, windows: np.ndarray, devices: np.ndarray) -> np.ndarray:
    del devices
    out = []
    for window in windows:
      x = window[None]
      out.append(self.model(x if self.frontend is None else self.frontend(x)))
    return np.concatenate(out)


def _write_unreadable(path: str, unreadable) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f, delimiter="\t", lineterminator="\n")
    writer.writerow(["filename", "problem"])
    writer.writerows(sorted(unreadable))


def _windows_split(windows: np.ndarray, devices: np.ndarray, data: dict):
  from jax_asc.data.dataset import Split
  n = len(windows)
  return Split(name="predict", dataset="folder", classes=list(data["classes"]),
               devices=list(data["devices"]), sample_rate=int(data["sample_rate"]),
               columns={"waveform": windows, "filename": np.array([str(i) for i in range(n)]),
                        "index": np.arange(n, dtype=np.int32),
                        "label": np.full(n, -1, np.int32),
                        "recording_device": np.asarray(devices, np.int32)})


def predict_folder(workdir: str, audio: str, out: str, *, checkpoint: str = "latest",
                   device_map: Optional[str] = None, fp16: bool = False,
                   batch_size: Optional[int] = None, tflite: Optional[str] = None,
                   files_per_chunk: int = 256, log=print) -> dict:
  """Writes `out` (and `<out>.unreadable.tsv` when a file could not be used); returns a summary:
  {"out", "files", "windows", "unreadable": [(name, reason)], "models": {model: files}}."""
  import jax.numpy as jnp
  from jax_asc import native
  from jax_asc.data import audio_io, folder
  from jax_asc.eval import submission as submission_lib
  from jax_asc.stages import common, submit
  from jax_asc.teachers import online

  config = online.load_run_config(workdir)
  if batch_size:
    with config.unlocked():
      config.evaluate.batch_size = int(batch_size)
  native.configure(config.get("kernels", "auto"))
  data = common.run_data(config, workdir)
  audio_io.check_resampler(config.data.resampler, "data.resampler")
  names = folder.find_audio(audio)
  unreadable: List[tuple] = []

  if tflite and (device_map or fp16):
    raise ValueError("--tflite runs one exported model: --device-map and --fp16 apply to the "
                     "run's checkpoints (export the precision you want instead)")
  routes = {"": np.arange(len(names))}
  file_devices = np.zeros(len(names), np.int32)
  if device_map:
    listed, unmatched = folder.match_device_map(names, folder.read_device_map(device_map))
    absent = [n for n, d in zip(names, listed) if not d]
    if absent:
      raise ValueError(f"{len(absent)} audio file(s) under {audio} are not in the device map "
                       f"{device_map} (first: {absent[:5]}); list them (device_id 'unknown' "
                       "goes to the general model)")
    unreadable += [(n, f"listed in the device map {device_map} but not found under {audio}")
                   for n in unmatched]
    tuned = submit.tuned_devices(workdir, needed_by="--device-map",
                                 instead="leave out --device-map")
    routes = submit.route(listed, tuned, source=f"the device map {device_map}", names=names)
    known = list(data["devices"])
    file_devices = np.array([known.index(d) if d in known else 0 for d in listed], np.int32)

  dtype = jnp.float16 if fp16 else jnp.float32
  logits = np.full((len(names), len(data["classes"])), np.nan, np.float32)
  readable = np.zeros(len(names), bool)
  models, n_windows, done, start = {}, 0, 0, time.time()
  for device, rows in routes.items():
    if tflite:
      model = _LiteRTModel(tflite, data)
    else:
      model = _Model(config, data,
                     os.path.join(workdir, "devices", device) if device else workdir,
                     "latest" if device else checkpoint, dtype)
    for chunk in _batches_of(rows, files_per_chunk):
      windows, owner, bad = folder.read_windows(
          audio, [names[r] for r in chunk], sample_rate=int(data["sample_rate"]),
          channels=int(data["channels"]), length=int(data["num_samples"]),
          resampler=config.data.resampler)
      unreadable += bad
      if len(windows):
        window_logits = model.logits(windows, file_devices[chunk][owner])
        sums = np.zeros((len(chunk), logits.shape[1]), np.float64)
        np.add.at(sums, owner, window_logits)
        counts = np.bincount(owner, minlength=len(chunk))
        used = counts > 0
        logits[chunk[used]] = (sums[used] / counts[used, None]).astype(np.float32)
        readable[chunk[used]] = True
        n_windows += len(windows)
      done += len(chunk)
      log(f"predict: {done}/{len(names)} files ({done / max(time.time() - start, 1e-9):.1f} "
          "files/s)")
    models[device or "general"] = int(len(rows))

  kept = [n for n, ok in zip(names, readable) if ok]
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  bad_path = out + ".unreadable.tsv"
  if not kept:
    _write_unreadable(bad_path, unreadable)
    raise ValueError(f"none of the {len(names)} audio files under {audio} could be used; the "
                     f"reasons are in {bad_path} (first: {sorted(unreadable)[:3]})")
  submission_lib.write_submission(out, kept, logits[readable], list(data["classes"]))
  submission_lib.validate_submission(out, kept, list(data["classes"]))
  if unreadable:
    _write_unreadable(bad_path, unreadable)
    for name, problem in sorted(unreadable):
      log(f"predict: not used: {name}: {problem}")
  elif os.path.exists(bad_path):
    os.remove(bad_path)
  log(f"predict: {len(kept)} files ({n_windows} windows) → {out}"
      + (f"; {len(unreadable)} not used, listed in {bad_path}" if unreadable else ""))
  return {"out": out, "files": len(kept), "windows": n_windows,
          "unreadable": sorted(unreadable), "models": models}
