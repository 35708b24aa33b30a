"""Synthetic spatial sound scenes for report 004 (S5): the embedded default of the tagging and
separation chain. Needs no download; built on first use into the cache folder.

Design
------
* **18 event classes** (`CLASSES`), each a generator of dry mono clips with its own
  spectro-temporal pattern, drawn per clip with jittered parameters: repeated tone pulses, an
  inharmonic bell, a whirring noise band, a harmonic buzz, clap bursts, coughs, knocks, clinks,
  a two-tone chime, footsteps, a hiss with hum, a fan, keyboard notes, drum hits, a rising pour,
  babble (syllable-modulated formant harmonics), typing clicks and a roar. Some are alike on
  purpose (the stationary noises whir / hiss / fan / roar; claps and typing; knocks, steps and
  drums; beeps, chime and bell), so tagging is neither at chance nor perfect.
* **Pools**: clip c of class k is fully determined by (seed, group, k, c). The "train" group
  feeds the training split, the "eval" group (other clips) validation and test, as the task
  keeps its sound events apart between train and valid.
* **Interferers** (non-target sounds): frequency sweeps, trills, rumbles and click trains.
* **Rooms** (`SyntheticRooms`): 4-channel first-order Ambisonics (ACN W, Y, Z, X; SN3D).
  A room has a reverberation time (0.2–0.6 s), a direct-to-reverberant ratio and 36 source
  positions (azimuth uniform, elevation −30…45°). The impulse response of a position is the
  plane-wave encoding of the direct path from its direction (W = 1 at delay 0), five early
  reflections from other directions (2–20 ms, gains 0.2–0.6) and a diffuse tail from 20 ms on:
  independent exponentially decaying noise per channel, the X/Y/Z channels at 1/√3 of W (a
  diffuse field in SN3D). As in the task, the oracle dry target is the source through channel 0's
  first 50 ms (`s5_mixing.direct_path`): the direct path, the early reflections and the first
  30 ms of the tail. Train and evaluation rooms differ.
* **Background**: diffuse 4-channel noise with the room's spectral tilt.
* Mixtures are drawn and rendered by `s5_mixing` (0–3 events at 5–20 dB, 0–2 interferers at
  0–15 dB, same-class duplicates ≥ 60° apart, background at the reference level), row i of a
  split from (seed, split, i): the dataset is deterministic. `duration_s` is short by default
  (4 s) so a CPU trains the smoke chain in minutes.

Splits `train`, `validation`, `test`, stored as float16 memory maps (`waveform` (N, 4, S),
`sources` (N, 3, S)) with `labels` (N, 3) (silence = 18), `metadata` (the mixture's JSON),
`filename`, `index`. With `on_the_fly_train` the train split is rendered when read instead,
`num_train` new mixtures every epoch (`Split.per_epoch`; nothing stored).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
from typing import Dict

import numpy as np

from jax_asc.data import dataset as dataset_lib
from jax_asc.data import s5_mixing

VERSION = 2   # 2: metadata carries the sources digest (s5_mixing.sources_digest)
SAMPLE_RATE = 32000
CLASSES = ("beeps", "bell", "whir", "buzz", "claps", "cough", "knocks", "clinks", "chime",
           "steps", "hiss", "fan", "keys", "drum", "pour", "babble", "typing", "roar")
INTERFERERS = ("sweep", "trill", "rumble", "click_train")
SILENCE = len(CLASSES)
CHANNELS = 4
GROUPS = {"train": "train", "validation": "eval", "test": "eval"}
IR_SECONDS = 0.4


def _t(n: int) -> np.ndarray:
  return np.arange(n) / SAMPLE_RATE


def _band_noise(r, n: int, center_hz: float, width_oct: float) -> np.ndarray:
  """White noise through a Gaussian band on a log-frequency axis, unit RMS."""
  freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
  octaves = np.log2(np.maximum(freqs, 20.0) / center_hz)
  spectrum = np.fft.rfft(r.standard_normal(n)) * np.exp(-0.5 * (octaves / width_oct) ** 2)
  x = np.fft.irfft(spectrum, n)
  return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


def _decaying(n: int, freq: float, tau: float, phase=0.0) -> np.ndarray:
  t = _t(n)
  return np.sin(2 * np.pi * freq * t + phase) * np.exp(-t / tau)


def _harmonic(t: np.ndarray, f0, partials: int, rolloff: float) -> np.ndarray:
  """Σ_h h^−rolloff sin(2π h ∫f0): f0 a number or a per-sample contour (Hz)."""
  phase = 2 * np.pi * np.cumsum(np.broadcast_to(f0, t.shape)) / SAMPLE_RATE
  return sum(h ** -rolloff * np.sin(h * phase) for h in range(1, partials + 1))


def _hits(r, n: int, times, make) -> np.ndarray:
  """A clip of `n` samples with `make(r, k)` (a short array) added at each time in seconds."""
  out = np.zeros(n)
  for k, time in enumerate(times):
    start = int(time * SAMPLE_RATE)
    if start >= n:
      break
    hit = make(r, k)[: n - start]
    out[start:start + len(hit)] += hit
  return out


def _envelope(n: int, attack_s: float, release_s: float) -> np.ndarray:
  t = _t(n)
  return np.minimum(1.0, t / max(attack_s, 1e-3)) * np.minimum(1.0, (t[-1] - t) / max(release_s, 1e-3) + 1e-3)


def _event_clip(kind: str, r: np.random.Generator) -> np.ndarray:
  """One dry clip of class or interferer `kind` (0.6–3 s), unit peak."""
  n = int(r.uniform(0.6, 3.0) * SAMPLE_RATE)
  t = _t(n)
  if kind == "beeps":
    f, period, width = r.uniform(1800, 2600), r.uniform(0.2, 0.35), r.uniform(0.06, 0.1)
    x = np.sin(2 * np.pi * f * t) * ((t % period) < width)
  elif kind == "bell":
    f = r.uniform(600, 1200)
    x = sum(a * _decaying(n, f * ratio, r.uniform(0.4, 0.8) / ratio ** 0.5)
            for ratio, a in ((1.0, 1.0), (2.76, 0.6), (5.4, 0.35), (8.9, 0.2)))
  elif kind == "whir":
    x = _band_noise(r, n, r.uniform(1200, 2000), 0.5) * (
        1 + 0.6 * np.sin(2 * np.pi * r.uniform(8, 15) * t))
  elif kind == "buzz":
    x = _harmonic(t, r.uniform(90, 160), 12, 1.0) * ((t % r.uniform(0.4, 0.7)) < 0.3)
  elif kind == "claps":
    times = np.cumsum(r.uniform(0.1, 0.4, 16))
    x = _hits(r, n, times, lambda r, k: _band_noise(r, 600, 2500, 0.8) * np.exp(-_t(600) / 0.006))
  elif kind == "cough":
    times = np.cumsum(r.uniform(0.0, 0.6, 3))
    x = _hits(r, n, times, lambda r, k: (_band_noise(r, 8000, r.uniform(500, 900), 0.6)
                                         + 0.5 * _harmonic(_t(8000), 200, 6, 1.5))
              * np.exp(-_t(8000) / 0.07))
  elif kind == "knocks":
    times = r.uniform(0, 0.3) + 0.15 * np.arange(5)
    x = _hits(r, n, times, lambda r, k: _decaying(2400, r.uniform(120, 250), 0.03)
              + 0.3 * _band_noise(r, 2400, 1500, 1.0) * np.exp(-_t(2400) / 0.004))
  elif kind == "clinks":
    times = np.sort(r.uniform(0, n / SAMPLE_RATE, r.integers(3, 9)))
    x = _hits(r, n, times, lambda r, k: _decaying(4000, r.uniform(3000, 6000), 0.05))
  elif kind == "chime":
    f = r.uniform(550, 750)
    x = _hits(r, n, (0.0, r.uniform(0.4, 0.6)),
              lambda r, k: _decaying(20000, f * (1.0 if k == 0 else 0.8), 0.35)
              + 0.3 * _decaying(20000, 2 * f * (1.0 if k == 0 else 0.8), 0.2))
  elif kind == "steps":
    times = r.uniform(0, 0.2) + r.uniform(0.45, 0.6) * np.arange(8)
    x = _hits(r, n, times, lambda r, k: _decaying(3200, 80, 0.04)
              + 0.4 * _band_noise(r, 3200, 600, 0.8) * np.exp(-_t(3200) / 0.015))
  elif kind == "hiss":
    x = _band_noise(r, n, r.uniform(3500, 5000), 0.6) + 0.3 * _harmonic(t, r.uniform(180, 220), 4, 1)
  elif kind == "fan":
    x = _band_noise(r, n, r.uniform(250, 400), 0.7) + 0.5 * _harmonic(t, r.uniform(40, 60), 8, 0.8)
  elif kind == "keys":
    scale = 261.63 * 2 ** (np.array([0, 2, 4, 5, 7, 9, 11, 12]) / 12)
    notes = r.choice(scale, r.integers(3, 7)) * r.choice([0.5, 1.0, 2.0])
    x = _hits(r, n, 0.3 * np.arange(len(notes)),
              lambda r, k: _harmonic(_t(12000), notes[k], 6, 1.2) * np.exp(-_t(12000) / 0.25))
  elif kind == "drum":
    period = r.uniform(0.2, 0.35)
    x = _hits(r, n, period * np.arange(10), lambda r, k: _decaying(6000, r.uniform(60, 120), 0.15)
              + 0.5 * _band_noise(r, 6000, 3000, 1.0) * np.exp(-_t(6000) / 0.02))
  elif kind == "pour":
    rise = np.exp(np.linspace(np.log(500), np.log(2000), n))
    x = sum(_band_noise(r, n, c, 0.3) * ((rise > c / 1.3) & (rise < c * 1.3))
            for c in (500, 800, 1200, 1800))
    x = x + 0.5 * _hits(r, n, np.sort(r.uniform(0, n / SAMPLE_RATE, 20)),
                        lambda r, k: _decaying(600, r.uniform(800, 2500), 0.005))
  elif kind == "babble":
    f0 = r.uniform(100, 220) * (1 + 0.1 * np.sin(2 * np.pi * r.uniform(0.5, 2) * t))
    voiced = _harmonic(t, f0, 30, 1.0)
    spectrum = np.fft.rfft(voiced)
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    formants = sum(np.exp(-0.5 * ((freqs - c) / 120) ** 2) for c in (r.uniform(500, 800),
                                                                     r.uniform(1100, 1700), 2600))
    x = np.fft.irfft(spectrum * formants, n) * np.maximum(
        0, np.sin(2 * np.pi * r.uniform(4, 6) * t + r.uniform(0, 6)))
  elif kind == "typing":
    times = np.cumsum(r.uniform(0.06, 0.14, 40))
    x = _hits(r, n, times, lambda r, k: _band_noise(r, 300, r.uniform(4000, 7000), 0.5)
              * np.exp(-_t(300) / 0.002))
  elif kind == "roar":
    x = _band_noise(r, n, r.uniform(800, 1300), 1.5) + 0.4 * _harmonic(t, r.uniform(130, 170), 6, 1)
  elif kind == "sweep":
    f = np.exp(np.linspace(np.log(r.uniform(200, 500)), np.log(r.uniform(2000, 6000)), n))
    x = np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE)
  elif kind == "trill":
    f = r.uniform(2500, 4000) * (1 + 0.15 * np.sin(2 * np.pi * r.uniform(15, 30) * t))
    x = np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE) * ((t % 0.5) < 0.35)
  elif kind == "rumble":
    x = _band_noise(r, n, r.uniform(50, 90), 0.5)
  elif kind == "click_train":
    x = _hits(r, n, np.arange(0, 3, r.uniform(0.02, 0.05)), lambda r, k: np.hanning(64))
  else:
    raise ValueError(f"unknown synthetic sound {kind!r}")
  x = x * _envelope(n, 0.01, 0.05)
  return (x / (np.max(np.abs(x)) + 1e-12)).astype(np.float32)


def _rng(seed, *path) -> np.random.Generator:
  return s5_mixing.rng_for(seed, "s5_synthetic", *path)


class SyntheticPools:
  """Clips of the synthetic classes, interferers and backgrounds of one group ("train" or
  "eval"), generated from the seed when asked for (a few recent ones kept)."""
  num_classes = len(CLASSES)

  def __init__(self, seed: int, group: str, clips_per_class: int, interferer_clips: int,
               backgrounds_per_room: int = 4):
    self.seed, self.group = int(seed), group
    self.clips_per_class, self.interferer_clips = int(clips_per_class), int(interferer_clips)
    self.backgrounds_per_room = int(backgrounds_per_room)
    self.clip = functools.lru_cache(maxsize=512)(self._clip)
    self.interferer = functools.lru_cache(maxsize=64)(self._interferer)

  def fingerprint(self) -> str:
    """Generated clips: the generator's version and settings identify them."""
    return (f"synthetic-pools:{VERSION}:{self.seed}:{self.group}:{self.clips_per_class}:"
            f"{self.interferer_clips}:{self.backgrounds_per_room}")

  def num_clips(self, label: int) -> int:
    return self.clips_per_class

  def _clip(self, label: int, clip: int) -> np.ndarray:
    return _event_clip(CLASSES[label], _rng(self.seed, self.group, "event", label, clip))

  def clip_length(self, label: int, clip: int) -> int:
    return len(self.clip(label, clip))

  def num_interferers(self) -> int:
    return self.interferer_clips

  def _interferer(self, clip: int) -> np.ndarray:
    kind = INTERFERERS[clip % len(INTERFERERS)]
    return _event_clip(kind, _rng(self.seed, self.group, "interferer", clip))

  def interferer_length(self, clip: int) -> int:
    return len(self.interferer(clip))

  def num_backgrounds(self, room: int) -> int:
    return self.backgrounds_per_room

  def background_length(self, room: int, clip: int) -> int:
    return 0   # generated at the mixture's length

  def background(self, room: int, clip: int, start: int, num_samples: int,
                 channels: int) -> np.ndarray:
    tilt = _rng(self.seed, self.group, "room", room).uniform(-1.5, -0.5)   # the room's colour
    r = _rng(self.seed, self.group, "background", room, clip)
    freqs = np.fft.rfftfreq(num_samples, 1.0 / SAMPLE_RATE)
    shape = (np.maximum(freqs, 50.0) / 1000.0) ** (tilt / 2)
    noise = np.fft.irfft(np.fft.rfft(r.standard_normal((channels, num_samples))) * shape,
                         num_samples)
    noise[1:] /= np.sqrt(3.0)   # diffuse field in SN3D
    return noise


class SyntheticRooms:
  """First-order Ambisonics rooms of one group (module docstring)."""
  channels = CHANNELS

  def __init__(self, seed: int, group: str, rooms: int, positions: int = 36):
    self.seed, self.group, self.rooms, self.positions = int(seed), group, int(rooms), positions
    self.impulse_response = functools.lru_cache(maxsize=1024)(self._impulse_response)

  def fingerprint(self) -> str:
    return f"synthetic-rooms:{VERSION}:{self.seed}:{self.group}:{self.rooms}:{self.positions}"

  def num_rooms(self) -> int:
    return self.rooms

  @functools.lru_cache(maxsize=None)
  def directions(self, room: int) -> np.ndarray:
    r = _rng(self.seed, self.group, "positions", room)
    return s5_mixing.unit_vectors(r.uniform(-180, 180, self.positions),
                                  r.uniform(-30, 45, self.positions))

  def _impulse_response(self, room: int, position: int) -> np.ndarray:
    room_r = _rng(self.seed, self.group, "room", room)
    room_r.uniform()                                   # the background tilt's draw
    rt60, drr_db = room_r.uniform(0.2, 0.6), room_r.uniform(3.0, 12.0)
    r = _rng(self.seed, self.group, "ir", room, position)
    length = int(IR_SECONDS * SAMPLE_RATE)
    ir = np.zeros((CHANNELS, length))
    ir[:, 0] = s5_mixing.foa_gains(self.directions(room)[position])
    for _ in range(5):
      delay = int(r.uniform(0.002, 0.02) * SAMPLE_RATE)
      az, el = r.uniform(-180, 180), r.uniform(-60, 60)
      ir[:, delay] += r.uniform(0.2, 0.6) * s5_mixing.foa_gains(s5_mixing.unit_vectors(az, el))
    start = int(0.02 * SAMPLE_RATE)
    t = np.arange(length - start) / SAMPLE_RATE
    tail = r.standard_normal((CHANNELS, length - start)) * np.exp(-6.9 * t / rt60)
    tail[1:] /= np.sqrt(3.0)
    tail *= 10 ** (-drr_db / 20) / np.sqrt(np.sum(tail[0] ** 2))   # energy ratio to the direct
    ir[:, start:] += tail
    return ir



def settings(cfg, split: str = "train") -> s5_mixing.MixtureSettings:
  """The mixing settings of `cfg` (`data.s5`) for `split`: the duration, and for the training
  split `min_events` (1 for the separator, which the task trains on 1-3 events; 0 for the
  tagger); validation and test mixtures always hold 0-3 events (one test set for the system)."""
  low = int(cfg.get("min_events", 0)) if split == "train" else 0
  return s5_mixing.MixtureSettings(duration_s=float(cfg.duration_s), sample_rate=SAMPLE_RATE,
                                   event_range=(low, 3))


def _folder_name(cfg, split: str) -> str:
  low = int(cfg.get("min_events", 0))
  return f"{split}_min{low}" if split == "train" and low else split


def _group_sources(cfg, group: str):
  clips = int(cfg.clips_per_class) if group == "train" else max(2, int(cfg.clips_per_class) // 3)
  rooms = int(cfg.rooms) if group == "train" else max(1, int(cfg.rooms) // 2)
  return (SyntheticPools(cfg.seed, group, clips, interferer_clips=4 * len(INTERFERERS)),
          SyntheticRooms(cfg.seed, group, rooms))


def _split(name, columns) -> dataset_lib.Split:
  return dataset_lib.Split(name=name, columns=columns, classes=CLASSES, devices=(),
                           sample_rate=SAMPLE_RATE, dataset="s5_synthetic")


def _build(folder: str, cfg, split: str, size: int) -> None:
  pools, rooms = _group_sources(cfg, GROUPS[split])
  mix = settings(cfg, split)
  specs = s5_mixing.draw_many(cfg.seed, split, size, pools, rooms, mix)
  tmp = os.path.join(folder, f".{split}.tmp{os.getpid()}")
  os.makedirs(tmp, exist_ok=True)
  shapes = {"waveform": (size, CHANNELS, mix.num_samples),
            "sources": (size, mix.num_tracks, mix.num_samples)}
  stores = {k: np.lib.format.open_memmap(os.path.join(tmp, f"{k}.npy"), "w+", np.float16, shape)
            for k, shape in shapes.items()}
  labels = np.full((size, mix.num_tracks), SILENCE, np.int32)
  for i, spec in enumerate(specs):
    rendered = s5_mixing.render(spec, pools, rooms, mix)
    for k, store in stores.items():
      store[i] = rendered[k]
    labels[i] = rendered["labels"]
  for store in stores.values():
    store.flush()
  np.save(os.path.join(tmp, "labels.npy"), labels)
  sources = s5_mixing.sources_digest(pools, rooms)
  np.save(os.path.join(tmp, "metadata.npy"), np.array([s.to_json(sources) for s in specs]))
  final = os.path.join(folder, _folder_name(cfg, split))
  try:
    os.replace(tmp, final)   # atomic: a killed build leaves no split
  except OSError:
    if not os.path.isdir(final):
      raise
    shutil.rmtree(tmp)       # another process built the same split first: the same bytes


def _drawn_split(cfg, size: int) -> dataset_lib.Split:
  """The training split drawn anew every epoch (`Split.per_epoch`), rendered when read."""
  pools, rooms = _group_sources(cfg, "train")
  mix = settings(cfg, "train")

  def epoch_split(epoch: int) -> dataset_lib.Split:
    columns = s5_mixing.drawn_columns(cfg.seed, "train", size, pools, rooms, mix, epoch)
    return dataclasses.replace(_split("train", columns), per_epoch=epoch_split)
  return epoch_split(0)


def load(cfg, cache_dir: str = "") -> Dict[str, dataset_lib.Split]:
  """Builds (once, cached) and loads the synthetic S5 splits.

  cfg keys: seed, num_train, num_validation, num_test, duration_s, min_events, clips_per_class,
  rooms, on_the_fly_train. cache_dir: '' = `$JAX_ASC_DATA_DIR` or `~/.cache/jax_asc`.
  """
  spec = dict(version=VERSION, seed=int(cfg.seed), duration_s=float(cfg.duration_s),
              clips_per_class=int(cfg.clips_per_class), rooms=int(cfg.rooms),
              sizes=dict(train=int(cfg.num_train), validation=int(cfg.num_validation),
                         test=int(cfg.num_test)))
  key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
  folder = os.path.join(cache_dir or dataset_lib.default_cache_dir(), "s5_synthetic", key)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "spec.json"), "w") as f:
    json.dump(spec, f, indent=1)
  splits = {}
  for split, size in spec["sizes"].items():
    if split == "train" and bool(cfg.on_the_fly_train):
      splits[split] = _drawn_split(cfg, size)
      continue
    else:
      where = os.path.join(folder, _folder_name(cfg, split))
      if not os.path.isdir(where):
        _build(folder, cfg, split, size)
      columns = {k: np.load(os.path.join(where, f"{k}.npy"), mmap_mode="r")
                 for k in ("waveform", "sources")}
      columns.update(labels=np.load(os.path.join(where, "labels.npy")),
                     metadata=np.load(os.path.join(where, "metadata.npy")))
    columns.update(filename=np.array([f"{split}_{i:09d}" for i in range(size)]),
                   index=np.arange(size, dtype=np.int32))
    splits[split] = _split(split, columns)
  return splits
