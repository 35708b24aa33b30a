"""A synthetic open set for few-shot tests (stage `fewshot`, dataset `synthetic_open`).

Built from the scene recipes of `synthetic.py` at the dataset seed of the run's synthetic set:
the 10 training scenes (seen by a model trained on it) plus `new_classes` scenes whose recipes
no split of the synthetic set holds (labels 10, 11, … drawn by `synthetic._class_recipe(seed,
label)` like the others, named `novel_<label>`: unseen). Every clip is recorded at a test
location (7-9) through one of the 9 devices in turn, as the synthetic test split, with clip
seeds `("open", label, i)` that no other split uses, so even the seen scenes are new clips at
new places. `per_class` clips of each class, in class order; fully determined by (seed,
per_class, new_classes, clip_seconds), built once and cached under
`<cache_dir>/synthetic_open/<key>/` (the synthetic set's splits and VERSION are untouched).
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
from typing import Dict

import numpy as np

from jax_asc.data import dataset as dataset_lib
from jax_asc.data import synthetic

OPEN_VERSION = 1
MAX_NEW_CLASSES = 10
SPLIT = "open"


def class_names(new_classes: int) -> tuple:
  """The 10 synthetic scenes, then `novel_10`, `novel_11`, …"""
  return synthetic.CLASSES + tuple(f"novel_{len(synthetic.CLASSES) + k}"
                                   for k in range(new_classes))


def _check(per_class: int, new_classes: int) -> None:
  if not 1 <= int(new_classes) <= MAX_NEW_CLASSES:
    raise ValueError(f"fewshot.synthetic_open.new_classes must be 1 … {MAX_NEW_CLASSES}, got "
                     f"{new_classes}")
  if int(per_class) < 2:
    raise ValueError(f"fewshot.synthetic_open.per_class must be ≥ 2, got {per_class}")


def build(seed: int, per_class: int, new_classes: int,
          clip_seconds: float = 1.0) -> Dict[str, np.ndarray]:
  """Renders the open set in memory: waveform (N, samples) int16 and metadata arrays (N =
  (10 + new_classes) · per_class)."""
  _check(per_class, new_classes)
  names = class_names(new_classes)
  n = int(round(clip_seconds * synthetic.SAMPLE_RATE))
  r = synthetic._rng(seed, "plan", "open", per_class, new_classes)
  labels = np.repeat(np.arange(len(names)), per_class)
  take = np.tile(np.arange(per_class), len(names))
  devices = np.array(synthetic.DEVICES)[take % len(synthetic.DEVICES)]
  locations = r.choice(synthetic.TEST_LOCATIONS, len(labels))
  jobs = [(seed, int(labels[i]), int(locations[i]), str(devices[i]),
           ("open", int(labels[i]), int(take[i])), n) for i in range(len(labels))]
  with concurrent.futures.ThreadPoolExecutor(min(os.cpu_count() or 1, 8)) as pool:
    waves = np.stack(list(pool.map(synthetic._render_pcm, jobs)))
  filenames = np.array([f"audio/{names[labels[i]]}-synth-{locations[i]}-open{i:05d}-"
                        f"{devices[i]}.wav" for i in range(len(labels))])
  return dict(waveform=waves, label=labels.astype(np.int32),
              device=np.array([synthetic.DEVICES.index(d) for d in devices], np.int32),
              location=locations.astype(np.int32), filename=filenames,
              index=np.arange(len(labels), dtype=np.int32))


def load(seed: int, per_class: int, new_classes: int = 5, clip_seconds: float = 1.0,
         cache_dir: str = "") -> dataset_lib.Split:
  """The open set as a `Split` named "open" (dataset "synthetic_open"), built on first use.

  Columns: waveform (N, 1, S) int16 PCM, label, recording_device, identifier
  (`{scene}-{location}`), filename, index. cache_dir: '' = `$JAX_ASC_DATA_DIR` or
  `~/.cache/jax_asc`.
  """
  _check(per_class, new_classes)
  spec = dict(version=synthetic.VERSION, open_version=OPEN_VERSION, seed=int(seed),
              per_class=int(per_class), new_classes=int(new_classes),
              clip_seconds=float(clip_seconds))
  key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
  folder = os.path.join(cache_dir or dataset_lib.default_cache_dir(), "synthetic_open", key)
  path = os.path.join(folder, f"{SPLIT}.npz")
  if not os.path.exists(path):
    os.makedirs(folder, exist_ok=True)
    arrays = build(spec["seed"], spec["per_class"], spec["new_classes"], spec["clip_seconds"])
    tmp = path + f".tmp{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)   # atomic: a killed build never leaves a half-written set
    with open(os.path.join(folder, "spec.json"), "w") as f:
      json.dump(spec, f, indent=1)
  with np.load(path) as stored:
    arrays = {k: stored[k] for k in stored.files}
  names = class_names(spec["new_classes"])
  columns = dict(
      waveform=arrays["waveform"][:, None, :], label=arrays["label"],
      recording_device=arrays["device"], filename=arrays["filename"], index=arrays["index"],
      identifier=np.array([f"{names[c]}-{l}" for c, l in zip(arrays["label"],
                                                             arrays["location"])]))
  return dataset_lib.Split(name=SPLIT, columns=columns, classes=names, devices=synthetic.DEVICES,
                           sample_rate=synthetic.SAMPLE_RATE, waveform_scale=1.0 / 32767,
                           dataset="synthetic_open")
