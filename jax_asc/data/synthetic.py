"""Synthetic acoustic scenes recorded by simulated devices: the embedded default dataset.

Needs no download. Built on first use into a cache folder (`data.cache_dir`, default
`$JAX_ASC_DATA_DIR` or `~/.cache/jax_asc`), then read like any other split.

Design
------
* 10 scene classes (the TAU Urban Acoustic Scenes names), 1-s clips at 32 kHz.
* A scene class is a recipe drawn once from the dataset seed:
  - background texture: Gaussian noise shaped by a spectral envelope (a power-law tilt plus two to
    four resonant bumps on a log-frequency axis) and slowly amplitude-modulated (0.1–3 Hz);
  - foreground events with class-specific Poisson rates, levels and parameters, of four kinds:
    impulses (decaying clicks, footsteps, doors), tonal/harmonic events (horns, announcements,
    birds), chirps (passing engines, brakes) and babble-like bursts (syllable-rate modulated
    band noise).
  Classes are built in pairs that share part of their background envelope (like bus/tram or
  metro/metro_station), and every clip also holds a few distractor events borrowed from other
  scenes (1.5 per second), so some confusions are expected.
* Locations: each class has 10 recording locations; a location perturbs the recipe (envelope
  bumps, tilt, event rates, levels). Locations 0–6 feed train/validation, 7–9 only the test split,
  so the test split measures generalisation to new places as the TAU sets do.
* Devices A, B, C, S1–S6: each has a fixed frequency response (smooth random EQ), a band limit
  (high- and low-pass), a noise floor and a mild saturating non-linearity. A is the near-flat
  reference. Train and validation use A (about half the clips), B, C, S1–S3; S4–S6 (stronger
  colouration) appear only in the test split, which has the same number of clips per device.
* Every clip is fully determined by (seed, split, clip index): the dataset is deterministic.

Stored as int16 PCM (like the wav files of the real sets) with metadata arrays; each example has
the columns `waveform` (1, samples), `label`, `recording_device`, `identifier`
(`{scene}-{location}`, the recording place, as TAU's `{city}-{location}`), `filename` and a
stable `index`.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
from typing import Dict

import numpy as np

from jax_asc.data import dataset as dataset_lib

VERSION = 2
SAMPLE_RATE = 32000
CLASSES = ("airport", "bus", "metro", "metro_station", "park", "public_square",
           "shopping_mall", "street_pedestrian", "street_traffic", "tram")
DEVICES = ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")
TRAIN_DEVICES = ("a", "b", "c", "s1", "s2", "s3")
TRAIN_DEVICE_WEIGHTS = (0.5, 0.1, 0.1, 0.1, 0.1, 0.1)
N_LOCATIONS = 10
TRAIN_LOCATIONS = tuple(range(7))
TEST_LOCATIONS = (7, 8, 9)
EVENT_KINDS = ("impulse", "tonal", "chirp", "babble")
DISTRACTOR_RATE = 1.5   # events per second borrowed from other scenes


def _rng(seed: int, *path) -> np.random.Generator:
  """An independent generator for one named purpose (stable across versions of NumPy)."""
  digest = hashlib.sha256(repr((seed,) + path).encode()).digest()
  return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _log_freq_axis(n: int, sr: int) -> np.ndarray:
  freqs = np.fft.rfftfreq(n, 1.0 / sr)
  return np.log2(np.maximum(freqs, 20.0) / 1000.0)   # octaves relative to 1 kHz


def _class_recipe(seed: int, label: int) -> Dict:
  family = _rng(seed, "family", label // 2)   # shared by the pair (2k, 2k+1)
  own = _rng(seed, "class", label)
  shared_bumps = [(family.uniform(-3.0, 2.5), family.uniform(0.3, 1.2), family.uniform(4, 12))
                  for _ in range(2)]
  own_bumps = [(own.uniform(-3.0, 3.5), own.uniform(0.2, 1.0), own.uniform(2, 7))
               for _ in range(own.integers(1, 3))]
  rates = own.uniform(0.0, 1.0, len(EVENT_KINDS)) ** 2 * own.choice([2.0, 4.0, 7.0])
  rates[own.integers(len(EVENT_KINDS))] += own.uniform(1.0, 4.0)  # one dominant event kind
  return dict(
      tilt=family.uniform(-1.6, -0.3) + own.uniform(-0.25, 0.25),  # dB per octave × 3
      bumps=shared_bumps + own_bumps,
      mod_rate=own.uniform(0.1, 3.0), mod_depth=own.uniform(0.0, 0.6),
      rates=rates,                                     # events per second, per kind
      event_snr=own.uniform(-12.0, 6.0, len(EVENT_KINDS)),  # dB over the background
      impulse_decay=own.uniform(0.002, 0.05), impulse_tilt=own.uniform(-1.0, 1.0),
      tonal_f0=np.sort(own.uniform(120.0, 1800.0, 2)), tonal_harmonics=int(own.integers(1, 8)),
      tonal_duration=own.uniform(0.08, 0.6),
      chirp_f=own.uniform(200.0, 6000.0, 2), chirp_duration=own.uniform(0.1, 0.8),
      babble_centre=own.uniform(-2.0, 1.5), babble_rate=own.uniform(2.0, 7.0),
  )


def _location_recipe(seed: int, label: int, location: int, recipe: Dict) -> Dict:
  r = _rng(seed, "location", label, location)
  loc = dict(recipe)
  loc["bumps"] = [(c + r.normal(0, 0.25), w, g + r.normal(0, 3.0)) for c, w, g in recipe["bumps"]]
  loc["tilt"] = recipe["tilt"] + r.normal(0, 0.2)
  loc["rates"] = recipe["rates"] * r.uniform(0.4, 2.0, len(EVENT_KINDS))
  loc["event_snr"] = recipe["event_snr"] + r.normal(0, 3.0, len(EVENT_KINDS))
  loc["level_db"] = r.uniform(-34.0, -24.0)
  return loc


def _device_response(seed: int, device: str, n: int) -> Dict:
  """Frequency response (rfft bins of an n-sample clip), noise floor and saturation drive."""
  index = DEVICES.index(device)
  r = _rng(seed, "device", device)
  octaves = _log_freq_axis(n, SAMPLE_RATE)
  freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
  if device == "a":
    gain_db = np.zeros_like(octaves)
    highpass, lowpass, noise_db, drive = 20.0, 15500.0, -80.0, 0.0
  else:
    strength = 1.0 if index < 6 else 1.8   # unseen devices colour the sound more
    gain_db = sum(r.uniform(-9, 9) * strength * np.exp(-0.5 * ((octaves - r.uniform(-2.5, 3.5))
                                                              / r.uniform(0.3, 1.2)) ** 2)
                  for _ in range(4))
    gain_db = gain_db + r.uniform(-1.5, 1.5) * strength * octaves   # overall tilt
    highpass = r.uniform(60.0, 350.0) * strength
    lowpass = r.uniform(5000.0, 14000.0) / strength
    noise_db = r.uniform(-62.0, -48.0)
    drive = r.uniform(0.5, 2.5) * strength
  magnitude = 10.0 ** (gain_db / 20.0)
  magnitude = magnitude / np.sqrt(1.0 + (highpass / np.maximum(freqs, 1.0)) ** 4)
  magnitude = magnitude / np.sqrt(1.0 + (freqs / lowpass) ** 8)
  return dict(magnitude=magnitude, noise_db=noise_db, drive=drive)


def _shaped_noise(r, n: int, octaves: np.ndarray, tilt: float, bumps) -> np.ndarray:
  envelope_db = 3.0 * tilt * octaves
  for centre, width, gain in bumps:
    envelope_db = envelope_db + gain * np.exp(-0.5 * ((octaves - centre) / width) ** 2)
  spectrum = np.fft.rfft(r.standard_normal(n)) * 10.0 ** (envelope_db / 20.0)
  x = np.fft.irfft(spectrum, n)
  return x / (np.std(x) + 1e-12)


def _event(kind: str, r, loc: Dict, octaves: np.ndarray) -> np.ndarray:
  sr = SAMPLE_RATE
  if kind == "impulse":
    length = int(min(0.3, loc["impulse_decay"] * 6) * sr)
    t = np.arange(length) / sr
    burst = _shaped_noise(r, length, _log_freq_axis(length, sr), loc["impulse_tilt"], [])
    return burst * np.exp(-t / loc["impulse_decay"])
  if kind == "tonal":
    length = int(loc["tonal_duration"] * r.uniform(0.7, 1.3) * sr)
    t = np.arange(length) / sr
    f0 = r.uniform(*loc["tonal_f0"])
    vibrato = 1.0 + 0.01 * np.sin(2 * np.pi * r.uniform(3, 7) * t)
    phase = 2 * np.pi * np.cumsum(f0 * vibrato) / sr
    tone = sum(np.sin(h * phase) / h for h in range(1, loc["tonal_harmonics"] + 1)
               if h * f0 < sr / 2)
    return tone * np.hanning(length)
  if kind == "chirp":
    length = int(loc["chirp_duration"] * r.uniform(0.7, 1.3) * sr)
    t = np.arange(length) / sr
    f_start, f_end = loc["chirp_f"] * r.uniform(0.85, 1.15, 2)
    freq = f_start * (f_end / f_start) ** (t / t[-1])
    return np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.hanning(length)
  # babble: band noise with syllable-rate modulation
  length = int(r.uniform(0.3, 0.9) * sr)
  t = np.arange(length) / sr
  band = [(loc["babble_centre"] + r.normal(0, 0.2), 0.6, 15.0)]
  noise = _shaped_noise(r, length, _log_freq_axis(length, sr), -0.5, band)
  syllables = 0.5 * (1 + np.sin(2 * np.pi * loc["babble_rate"] * t + r.uniform(0, 2 * np.pi)))
  return noise * syllables ** 2 * np.hanning(length)


def _add_event(scene: np.ndarray, r, kind: str, recipe: Dict, snr_db: float, octaves) -> None:
  """Adds one event of `kind` at a random onset (it may start before or run past the clip)."""
  n = len(scene)
  event = _event(kind, r, recipe, octaves)[:n]
  event = event / (np.sqrt(np.mean(event ** 2)) + 1e-12)
  gain = 10.0 ** ((snr_db + r.normal(0, 3.0)) / 20.0)
  start = r.integers(-len(event) // 2, n)
  lo, hi = max(start, 0), min(start + len(event), n)
  scene[lo:hi] += gain * event[lo - start:hi - start]


def render_clip(seed: int, label: int, location: int, device: str, clip_seed,
                n: int = SAMPLE_RATE) -> np.ndarray:
  """One clip (n samples, float64 in [-1, 1]) of scene `label` at `location` through `device`."""
  recipe = _location_recipe(seed, label, location, _class_recipe(seed, label))
  r = _rng(seed, "clip", clip_seed)
  octaves = _log_freq_axis(n, SAMPLE_RATE)
  t = np.arange(n) / SAMPLE_RATE
  background = _shaped_noise(r, n, octaves, recipe["tilt"], recipe["bumps"])
  background *= 1.0 + recipe["mod_depth"] * np.sin(
      2 * np.pi * recipe["mod_rate"] * t + r.uniform(0, 2 * np.pi))
  scene = background
  for k, kind in enumerate(EVENT_KINDS):
    for _ in range(r.poisson(recipe["rates"][k] * n / SAMPLE_RATE)):
      _add_event(scene, r, kind, recipe, recipe["event_snr"][k], octaves)
  # Distractors: events borrowed from a random other scene, as real scenes overlap.
  for _ in range(r.poisson(DISTRACTOR_RATE * n / SAMPLE_RATE)):
    other = int(r.integers(len(CLASSES)))
    other_recipe = _location_recipe(seed, other, int(r.integers(N_LOCATIONS)),
                                    _class_recipe(seed, other))
    k = int(r.integers(len(EVENT_KINDS)))
    _add_event(scene, r, EVENT_KINDS[k], other_recipe, other_recipe["event_snr"][k], octaves)
  scene = scene / (np.sqrt(np.mean(scene ** 2)) + 1e-12) * 10.0 ** (recipe["level_db"] / 20.0)
  dev = _device_response(seed, device, n)
  recorded = np.fft.irfft(np.fft.rfft(scene) * dev["magnitude"], n)
  if dev["drive"] > 0:
    drive = dev["drive"] / (np.max(np.abs(recorded)) + 1e-12) * 0.5
    recorded = np.tanh(drive * recorded) / drive
  recorded += r.standard_normal(n) * 10.0 ** (dev["noise_db"] / 20.0)
  return np.clip(recorded, -1.0, 1.0 - 1.0 / 32768)


def _render_pcm(job) -> np.ndarray:
  return np.round(render_clip(*job) * 32767).astype(np.int16)


def _split_plan(seed: int, split: str, size: int):
  """(label, location, device) of every clip of a split."""
  r = _rng(seed, "plan", split)
  labels = np.arange(size) % len(CLASSES)
  if split == "test":
    devices = np.array(DEVICES)[(np.arange(size) // len(CLASSES)) % len(DEVICES)]
    locations = r.choice(TEST_LOCATIONS, size)
  else:
    devices = r.choice(TRAIN_DEVICES, size, p=TRAIN_DEVICE_WEIGHTS)
    locations = r.choice(TRAIN_LOCATIONS, size)
  return labels, locations, devices


def build_split(seed: int, split: str, size: int, clip_seconds: float = 1.0) -> Dict[str, np.ndarray]:
  """Renders one split in memory: waveform (size, samples) int16 plus metadata arrays."""
  if split not in ("train", "validation", "test"):
    raise ValueError(f"synthetic split must be train, validation or test, got {split!r}")
  n = int(round(clip_seconds * SAMPLE_RATE))
  labels, locations, devices = _split_plan(seed, split, size)
  jobs = [(seed, int(labels[i]), int(locations[i]), str(devices[i]), (split, i), n)
          for i in range(size)]
  # Threads (NumPy's FFTs release the GIL); processes would re-import the caller's __main__.
  with concurrent.futures.ThreadPoolExecutor(min(os.cpu_count() or 1, 8)) as pool:
    clips = list(pool.map(_render_pcm, jobs))
  waves = np.stack(clips)
  filenames = []
  for i in range(size):
    filenames.append(f"audio/{CLASSES[labels[i]]}-synth-{locations[i]}-{split}{i:05d}-"
                     f"{devices[i]}.wav")
  return dict(waveform=waves, label=labels.astype(np.int32),
              device=np.array([DEVICES.index(d) for d in devices], np.int32),
              location=locations.astype(np.int32), filename=np.array(filenames),
              index=np.arange(size, dtype=np.int32))


def load(cfg, cache_dir: str = "") -> Dict[str, dataset_lib.Split]:
  """Builds (once, cached on disk) and loads the synthetic splits named in `cfg`.

  cfg keys: seed, num_train, num_validation, num_test (a multiple of 9·10 keeps devices and
  classes balanced), clip_seconds. cache_dir: '' = `$JAX_ASC_DATA_DIR` or `~/.cache/jax_asc`.
  """
  spec = dict(version=VERSION, seed=int(cfg.seed), clip_seconds=float(cfg.clip_seconds),
              sizes=dict(train=int(cfg.num_train), validation=int(cfg.num_validation),
                         test=int(cfg.num_test)))
  key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
  folder = os.path.join(cache_dir or dataset_lib.default_cache_dir(), "synthetic_scenes", key)
  splits = {}
  for split, size in spec["sizes"].items():
    path = os.path.join(folder, f"{split}.npz")
    if not os.path.exists(path):
      os.makedirs(folder, exist_ok=True)
      arrays = build_split(spec["seed"], split, size, spec["clip_seconds"])
      tmp = path + f".tmp{os.getpid()}.npz"
      np.savez(tmp, **arrays)
      os.replace(tmp, path)   # atomic: a killed build never leaves a half-written split
      with open(os.path.join(folder, "spec.json"), "w") as f:
        json.dump(spec, f, indent=1)
    with np.load(path) as stored:
      arrays = {k: stored[k] for k in stored.files}
    columns = dict(
        waveform=arrays["waveform"][:, None, :], label=arrays["label"],
        recording_device=arrays["device"], filename=arrays["filename"], index=arrays["index"],
        identifier=np.array([f"{CLASSES[c]}-{l}" for c, l in zip(arrays["label"],
                                                                  arrays["location"])]))
    splits[split] = dataset_lib.Split(
        name=split, columns=columns, classes=CLASSES, devices=DEVICES, sample_rate=SAMPLE_RATE,
        waveform_scale=1.0 / 32767, dataset="synthetic")
  return splits
