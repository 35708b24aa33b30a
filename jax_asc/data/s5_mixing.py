"""Spatial sound-scene mixtures of report 004 (DCASE 2026 Task 4, S5): what a mixture is, how one
is drawn and how it is rendered, in NumPy, for the real development set and the synthetic one.

A mixture (`MixtureSpec`) is fully described by plain numbers, so it can be stored as JSON, drawn
again from (seed, split, row) and rendered by any worker:

* 0–3 **target events** (`Event`): a class, a clip of that class's pool, a start in the clip, an
  onset in the mixture, a room position and an event SNR (5–20 dB). With probability
  `duplicate_rate` (mixtures of ≥ 2 events) 1…`max_duplicates` of them repeat the class of an
  earlier event from another clip, at a position at least `duplicate_min_angle_deg` away from
  every event of that class (the task's same-class duplicates).
* 0–2 **interferers**: clips of non-target sounds at 0–15 dB, placed like the events.
* a **background**: a multichannel noise clip of the room, at the reference level `ref_db`.

Levels follow the task's synthesiser (nttcslab/SpAudSyn, `spatial_audio_synthesizer.py`): a clip
segment is peak-normalised and convolved with the impulse response of its position ("full":
the reverberant tail is kept and cut at the mixture's end); its gain sets the mean power of that
whole wet image, over all channels, to `ref_db + snr` dB full scale. The background's mean power
over all channels is `ref_db`. The dry target of an event is the segment convolved with the
direct part of channel 0 of the same impulse response (`direct_path`: the taps from 6 ms before
to 50 ms after its peak), times the same gain: the oracle target the metric compares with. The
mixture is the plain sum (no normalisation, no clipping).

Rendering needs a `Pools` (where clips come from: the development set's wav files or the
synthetic generators) and a `Room` (the impulse responses: SOFA files or synthetic FOA rooms).
Outputs follow `dataset.COLUMNS`: `waveform` (C, S) the mixture, `sources` (K, S) the dry
targets in track order (silent tracks zero), `labels` (K,) class ids (silence = `num_classes`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from typing import List, Optional, Protocol, Sequence, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class MixtureSettings:
  """How mixtures are drawn (the task's defaults; the synthetic set shortens the duration)."""
  duration_s: float = 10.0
  sample_rate: int = 32000
  num_tracks: int = 3                          # K: tracks of the tagger and separator
  event_range: Tuple[int, int] = (0, 3)         # target events per mixture (inclusive)
  event_snr_db: Tuple[float, float] = (5.0, 20.0)
  interferer_range: Tuple[int, int] = (0, 2)
  interferer_snr_db: Tuple[float, float] = (0.0, 15.0)
  ref_db: float = -55.0                        # background mean power, dB full scale
  duplicate_rate: float = 0.5
  max_duplicates: int = 2
  duplicate_min_angle_deg: float = 60.0
  shuffle_tracks: bool = True                  # event order in the tracks is random

  @property
  def num_samples(self) -> int:
    return int(round(self.duration_s * self.sample_rate))

  def __post_init__(self):
    lo, hi = self.event_range
    if not 0 <= lo <= hi <= self.num_tracks:
      raise ValueError(f"event_range {self.event_range} must lie in [0, num_tracks = "
                       f"{self.num_tracks}]")
    if not 0 <= self.interferer_range[0] <= self.interferer_range[1]:
      raise ValueError(f"interferer_range {self.interferer_range} must be 0 ≤ lo ≤ hi")


@dataclasses.dataclass(frozen=True)
class Event:
  """One sound in a mixture. `clip`: index in its pool (class `label`'s clips for targets, the
  interferer pool otherwise); `clip_start`: first sample of the clip used; `onset`: sample of the
  mixture where it starts; `position`: index of a room position; `snr_db`: its level over the
  background."""
  label: int
  clip: int
  clip_start: int
  onset: int
  length: int
  position: int
  snr_db: float


@dataclasses.dataclass(frozen=True)
class MixtureSpec:
  """A mixture: its target events in track order (≤ K), interferers, background clip, room."""
  events: Tuple[Event, ...]
  interferers: Tuple[Event, ...]
  background: int
  room: int
  background_start: int = 0      # first sample of the background clip used

  def to_json(self, sources: str = "") -> str:
    """The spec as JSON; `sources` (`sources_digest`) adds what its indices point at."""
    raw = dataclasses.asdict(self)
    if sources:
      raw["sources"] = sources
    return json.dumps(raw, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "MixtureSpec":
    raw = json.loads(text)
    return cls(events=tuple(Event(**e) for e in raw["events"]),
               interferers=tuple(Event(**e) for e in raw["interferers"]),
               background=int(raw["background"]), room=int(raw["room"]),
               background_start=int(raw.get("background_start", 0)))


class Pools(Protocol):
  """Where the clips come from (mono float32 at the mixture's rate)."""
  num_classes: int

  def num_clips(self, label: int) -> int: ...
  def clip_length(self, label: int, clip: int) -> int: ...
  def clip(self, label: int, clip: int) -> np.ndarray: ...
  def num_interferers(self) -> int: ...
  def interferer_length(self, clip: int) -> int: ...
  def interferer(self, clip: int) -> np.ndarray: ...
  def num_backgrounds(self, room: int) -> int: ...
  def background_length(self, room: int, clip: int) -> int: ...
  # Optional: clip_group(label, clip) → the clip's recording group (the task's sound events
  # lie in per-source subfolders: a same-class duplicate never comes from the group of an
  # event already in the mixture); interferer_groups() → interferer clips by label (a label is
  # drawn first, then a clip of it, as SpAudSyn does).
  def background(self, room: int, clip: int, start: int, num_samples: int,
                 channels: int) -> np.ndarray: ...
  # Optional (Pools and Rooms): fingerprint() → what the indices point at (the files' names and
  # sizes, or a generator's settings), recorded in each mixture's metadata (`sources_digest`).


class Rooms(Protocol):
  """The rooms' impulse responses: room r has positions (P_r, 3) (directions from the listener;
  only their angles matter), and for each a (C, L) impulse response whose channel 0 is the
  reference."""
  channels: int

  def num_rooms(self) -> int: ...
  def directions(self, room: int) -> np.ndarray: ...
  def impulse_response(self, room: int, position: int) -> np.ndarray: ...


def rng_for(seed: int, *path) -> np.random.Generator:
  """An independent generator for one named purpose, e.g. rng_for(seed, 'train', row)."""
  digest = hashlib.sha256(repr((int(seed),) + tuple(path)).encode()).digest()
  return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _place(rng, length: int, settings: MixtureSettings) -> Tuple[int, int, int]:
  """(clip_start, onset, length) of a clip of `length` samples in the mixture."""
  total = settings.num_samples
  used = min(length, total)
  clip_start = int(rng.integers(0, length - used + 1))
  onset = int(rng.integers(0, total - used + 1))
  return clip_start, onset, used


def _far_enough(unit: np.ndarray, taken: Sequence[int], min_deg: float) -> np.ndarray:
  """(P,) True where a position's direction is more than `min_deg` from every `taken` one
  (`unit`: (P, 3) unit vectors)."""
  if not len(taken):
    return np.ones(len(unit), bool)
  cos = np.clip(unit @ unit[list(taken)].T, -1.0, 1.0)
  return np.all(np.degrees(np.arccos(cos)) > min_deg, axis=1)


def draw(rng: np.random.Generator, pools: Pools, rooms: Rooms,
         settings: MixtureSettings) -> MixtureSpec:
  """A random mixture as the task defines them (module docstring), from `rng` alone."""
  room = int(rng.integers(rooms.num_rooms()))
  directions = rooms.directions(room)
  num_positions = len(directions)
  unit = directions / np.linalg.norm(directions, axis=-1, keepdims=True)
  n_events = int(rng.integers(settings.event_range[0], settings.event_range[1] + 1))
  n_dup = 0
  if n_events >= 2 and rng.random() < settings.duplicate_rate:
    n_dup = int(rng.integers(1, min(n_events - 1, settings.max_duplicates) + 1))
  classes = [c for c in range(pools.num_classes) if pools.num_clips(c) > 0]
  if len(classes) < n_events - n_dup:
    raise ValueError(f"mixtures of {n_events} distinct events need as many classes with clips; "
                     f"the pools have {len(classes)}")
  labels = [int(c) for c in rng.choice(classes, n_events - n_dup, replace=False)]
  events: List[Event] = []
  for label in labels:
    clip = int(rng.integers(pools.num_clips(label)))
    events.append(_event(rng, label, clip, pools.clip_length(label, clip),
                         int(rng.integers(num_positions)), settings.event_snr_db, settings))
  group = getattr(pools, "clip_group", lambda label, clip: clip)

  def free_clips(label):
    used = {group(label, e.clip) for e in events if e.label == label}
    return [c for c in range(pools.num_clips(label)) if group(label, c) not in used]

  for _ in range(n_dup):
    repeatable = [l for l in labels if free_clips(l)]
    if not repeatable:   # every class's sources are in the mixture already: a new class
      fresh = [c for c in classes if c not in {e.label for e in events}]
      if not fresh:
        raise ValueError(f"a mixture of {n_events} events needs more classes or clips than "
                         f"the pools have")
      label = int(fresh[int(rng.integers(len(fresh)))])
      labels.append(label)
    else:
      label = repeatable[int(rng.integers(len(repeatable)))]
    free = free_clips(label)
    clip = int(free[int(rng.integers(len(free)))])
    taken = [e.position for e in events if e.label == label]
    allowed = np.flatnonzero(_far_enough(unit, taken, settings.duplicate_min_angle_deg))
    if not len(allowed):
      raise ValueError(f"room {room} has no position {settings.duplicate_min_angle_deg}° away "
                       f"from positions {taken}")
    events.append(_event(rng, label, clip, pools.clip_length(label, clip),
                         int(allowed[int(rng.integers(len(allowed)))]), settings.event_snr_db,
                         settings))
  if settings.shuffle_tracks:
    events = [events[i] for i in rng.permutation(len(events))]
  interferers = []
  if pools.num_interferers() > 0:
    n_int = int(rng.integers(settings.interferer_range[0], settings.interferer_range[1] + 1))
    groups = pools.interferer_groups() if hasattr(pools, "interferer_groups") else None
    for _ in range(n_int):
      if groups:
        members = groups[int(rng.integers(len(groups)))]
        clip = int(members[int(rng.integers(len(members)))])
      else:
        clip = int(rng.integers(pools.num_interferers()))
      interferers.append(_event(rng, -1, clip, pools.interferer_length(clip),
                                int(rng.integers(num_positions)), settings.interferer_snr_db,
                                settings))
  if pools.num_backgrounds(room) < 1:
    raise ValueError(f"no background noise clip for room {room}")
  background = int(rng.integers(pools.num_backgrounds(room)))
  spare = pools.background_length(room, background) - settings.num_samples
  # SpAudSyn: a longer background starts at a whole second; a shorter one is tiled
  start = int(np.floor(rng.uniform(0, spare / settings.sample_rate))) * settings.sample_rate \
      if spare > 0 else 0
  return MixtureSpec(events=tuple(events), interferers=tuple(interferers),
                     background=background, room=room, background_start=start)


def _event(rng, label, clip, clip_length, position, snr_range, settings) -> Event:
  clip_start, onset, length = _place(rng, clip_length, settings)
  return Event(label=int(label), clip=int(clip), clip_start=clip_start, onset=onset,
               length=length, position=int(position),
               snr_db=float(rng.uniform(*snr_range)))


def convolve(signal: np.ndarray, response: np.ndarray, length: int) -> np.ndarray:
  """(…, L) response applied to a mono (S,) signal by FFT, the first `length` samples (…, length)
  (causal: the output starts with the signal)."""
  n = len(signal) + response.shape[-1] - 1
  size = 1 << (n - 1).bit_length()
  out = np.fft.irfft(np.fft.rfft(signal, size) * np.fft.rfft(response, size), size)
  out = out[..., :length]
  if out.shape[-1] < length:
    out = np.pad(out, [(0, 0)] * (out.ndim - 1) + [(0, length - out.shape[-1])])
  return out


def power_db(x: np.ndarray) -> float:
  """Mean power of `x` over every axis, dB full scale."""
  return 10.0 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20)


def direct_path(response: np.ndarray, sample_rate: int, before_ms: float = 6.0,
                after_ms: float = 50.0) -> np.ndarray:
  """Channel 0 of a (C, L) impulse response with every tap outside [peak − before_ms,
  peak + after_ms] zeroed (SpAudSyn's `direct_range_ms` [6, 50]): (L,)."""
  reference = np.asarray(response[0], np.float64)
  peak = int(np.argmax(np.abs(reference)))
  lo = max(peak - int(before_ms * sample_rate / 1000), 0)
  hi = min(peak + int(after_ms * sample_rate / 1000), len(reference) - 1)
  out = np.zeros_like(reference)
  out[lo:hi + 1] = reference[lo:hi + 1]
  return out


def _image(pools: Pools, rooms: Rooms, spec: MixtureSpec, event: Event, clip: np.ndarray,
           settings: MixtureSettings, level_db: float):
  """(wet image (C, S), dry reference-channel image (S,)) of `event`, its whole wet image
  (all channels, the tail included) at mean power `level_db` dB full scale."""
  total = settings.num_samples
  piece = np.asarray(clip[event.clip_start:event.clip_start + event.length], np.float64)
  piece = piece / (np.max(np.abs(piece)) + 1e-12)
  response = rooms.impulse_response(spec.room, event.position)
  full = len(piece) + response.shape[-1] - 1
  wet = convolve(piece, response, full)
  gain = 10.0 ** ((level_db - power_db(wet)) / 20.0) if np.any(wet) else 0.0
  wet = wet[:, :total - event.onset]
  dry = convolve(piece, direct_path(response, settings.sample_rate), wet.shape[-1])
  wet_full = np.zeros((wet.shape[0], total))
  dry_full = np.zeros(total)
  wet_full[:, event.onset:event.onset + wet.shape[-1]] = gain * wet
  dry_full[event.onset:event.onset + dry.shape[-1]] = gain * dry
  return wet_full, dry_full


def render(spec: MixtureSpec, pools: Pools, rooms: Rooms, settings: MixtureSettings):
  """{"waveform": (C, S) float32 mixture, "sources": (K, S) float32 dry targets in track order,
  "labels": (K,) int32 (silence = pools.num_classes)} of one mixture."""
  total, k = settings.num_samples, settings.num_tracks
  if len(spec.events) > k:
    raise ValueError(f"a mixture of {len(spec.events)} events does not fit {k} tracks")
  channels = rooms.channels
  background = np.asarray(pools.background(spec.room, spec.background, spec.background_start,
                                           total, channels), np.float64)
  if background.shape != (channels, total):
    raise ValueError(f"background {spec.background} of room {spec.room} is "
                     f"{background.shape}, expected ({channels}, {total})")
  mixture = background * 10.0 ** ((settings.ref_db - power_db(background)) / 20.0)
  sources = np.zeros((k, total))
  labels = np.full((k,), pools.num_classes, np.int32)
  for track, event in enumerate(spec.events):
    wet, dry = _image(pools, rooms, spec, event, pools.clip(event.label, event.clip), settings,
                      settings.ref_db + event.snr_db)
    mixture += wet
    sources[track] = dry
    labels[track] = event.label
  for event in spec.interferers:
    wet, _ = _image(pools, rooms, spec, event, pools.interferer(event.clip), settings,
                    settings.ref_db + event.snr_db)
    mixture += wet
  return {"waveform": mixture.astype(np.float32), "sources": sources.astype(np.float32),
          "labels": labels}


class RenderedColumn:
  """Column `name` ("waveform" or "sources") of mixtures rendered when indexed (on-the-fly
  training mixtures): row i is `render(specs[i])`. Both columns of one batch share the renders
  of the rows asked for last, so a batch renders each mixture once. Stands in for an array like
  `tfds_source.RecordColumn` (`lazy`, `shape`, `dtype`, `len`, indexing by rows)."""
  lazy = True

  def __init__(self, renderer: "Renderer", name: str):
    self.renderer, self.name = renderer, name
    rows = renderer.settings.num_tracks if name == "sources" else renderer.rooms.channels
    self._shape = (len(renderer.specs), rows, renderer.settings.num_samples)

  @property
  def shape(self):
    return self._shape

  @property
  def dtype(self):
    return np.dtype(np.float32)

  @property
  def ndim(self):
    return 3

  def __len__(self) -> int:
    return self._shape[0]

  def __getitem__(self, key):
    rows = np.arange(len(self))[key]
    single = np.ndim(rows) == 0
    out = np.stack([self.renderer.row(int(r))[self.name] for r in np.atleast_1d(rows)]) \
        if np.size(rows) else np.zeros((0,) + self._shape[1:], np.float32)
    return out[0] if single else out

  def __array__(self, dtype=None, copy=None):
    out = self[np.arange(len(self))]
    return out if dtype is None else out.astype(dtype)


def sources_digest(pools: Pools, rooms: Rooms) -> str:
  """A digest of the pools' and rooms' `fingerprint()`s ("" when they give none): a spec's
  clip, background and room indices mean the same audio only under the same digest (a file added
  to a folder shifts the indices after it)."""
  parts = [getattr(source, "fingerprint", lambda: "")() for source in (pools, rooms)]
  if not any(parts):
    return ""
  return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


class Renderer:
  """Renders the mixtures `specs` on demand, keeping the last `keep` renders."""

  def __init__(self, specs: Sequence[MixtureSpec], pools: Pools, rooms: Rooms,
               settings: MixtureSettings, keep: int = 64):
    self.specs, self.pools, self.rooms, self.settings = list(specs), pools, rooms, settings
    self.keep = keep
    self._cache: dict = {}
    self._lock = threading.Lock()   # pipelines may read columns from several threads

  def row(self, i: int) -> dict:
    with self._lock:
      if i in self._cache:
        return self._cache[i]
    rendered = render(self.specs[i], self.pools, self.rooms, self.settings)
    with self._lock:
      while len(self._cache) >= self.keep:
        self._cache.pop(next(iter(self._cache)))
      self._cache[i] = rendered
    return rendered

  def columns(self) -> dict:
    """{"waveform", "sources": lazy columns; "labels": (N, K) int32; "metadata": (N,) JSON of
    each spec with the pools' and rooms' `sources_digest`}."""
    k, silence = self.settings.num_tracks, self.pools.num_classes
    sources = sources_digest(self.pools, self.rooms)
    labels = np.full((len(self.specs), k), silence, np.int32)
    for i, spec in enumerate(self.specs):
      for track, event in enumerate(spec.events):
        labels[i, track] = event.label
    return {"waveform": RenderedColumn(self, "waveform"),
            "sources": RenderedColumn(self, "sources"), "labels": labels,
            "metadata": np.array([s.to_json(sources) for s in self.specs])}


def draw_many(seed: int, split: str, count: int, pools: Pools, rooms: Rooms,
              settings: MixtureSettings, offset: int = 0) -> List[MixtureSpec]:
  """Mixtures `offset … offset + count − 1` of `split`: row i from rng_for(seed, split, i), so
  a row is the same whoever draws it and however many are drawn."""
  return [draw(rng_for(seed, "mixture", split, offset + i), pools, rooms, settings)
          for i in range(count)]


def drawn_columns(seed: int, split: str, count: int, pools: Pools, rooms: Rooms,
                  settings: MixtureSettings, epoch: int = 0) -> dict:
  """The columns of epoch `epoch` of a split of `count` mixtures drawn on the fly: mixtures
  epoch·count … epoch·count + count − 1 of `split` (`draw_many`), rendered when read, named by
  that draw index (`<split>_<index>`: a mixture's id across epochs)."""
  first = epoch * count
  specs = draw_many(seed, split, count, pools, rooms, settings, offset=first)
  columns = Renderer(specs, pools, rooms, settings).columns()
  columns.update(filename=np.array([f"{split}_{first + i:09d}" for i in range(count)]),
                 index=np.arange(count, dtype=np.int32))
  return columns


def unit_vectors(azimuth_deg, elevation_deg) -> np.ndarray:
  """(…, 3) unit vectors (x front, y left, z up) of azimuths / elevations in degrees."""
  az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
  return np.stack([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)], axis=-1)


def foa_gains(direction: np.ndarray) -> np.ndarray:
  """(4,) first-order Ambisonics gains of a plane wave from unit `direction` (x, y, z): ACN
  channel order W, Y, Z, X with SN3D normalisation (W = 1)."""
  x, y, z = direction
  return np.array([1.0, y, z, x])


def check_mixture(waveform: np.ndarray, sample_rate: int, expected_channels: int,
                  expected_rate: int, where: str, expected_samples: Optional[int] = None):
  """Raises naming `where` when a mixture has the wrong channel count, rate or length."""
  if sample_rate != expected_rate:
    raise ValueError(f"{where}: sample rate {sample_rate} Hz, the S5 mixtures are "
                     f"{expected_rate} Hz")
  if waveform.ndim != 2 or waveform.shape[0] != expected_channels:
    raise ValueError(f"{where}: {waveform.shape[0] if waveform.ndim == 2 else 1} channel(s), "
                     f"expected {expected_channels}")
  if expected_samples is not None and waveform.shape[-1] != expected_samples:
    raise ValueError(f"{where}: {waveform.shape[-1]} samples, expected {expected_samples}")
