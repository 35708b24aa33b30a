"""The DCASE 2026 Task 4 (S5) data: development and evaluation layouts, read into `Split`s.

`root` is the task's `data` folder (../shared/reference/datasets.md §8):
```
dev_set/sound_event/{train,valid}/<Class>/…/*.wav   dry target events, 32 kHz mono (in
                                                    per-source subfolders or not)
dev_set/interference/{train,valid}/<label>/…/*.wav  non-target sounds
dev_set/noise/{train,valid}/*.wav                   4-channel backgrounds
dev_set/room_ir/{train,valid}/*.sofa                4-channel (FOA) room impulse responses
dev_set/metadata/valid.json                         [{"metadata_path": …}] SpAudSyn metadata
dev_set/synthesized/test/{soundscape,oracle_target}/*.wav
eval_set/synthesized/eval/soundscape/*.wav          (prediction only)
```
Splits:
  train   `num_train` mixtures per epoch drawn on the fly from the train folders
          (`s5_mixing.draw`; epoch e's row i is mixture e·num_train + i of (seed, "train"),
          `Split.per_epoch`: new mixtures every epoch, as the task's generator, and the same
          ones when a run resumes; `on_the_fly_train=False`: epoch 0's every epoch), rendered
          when a batch reads them;
  valid   the mixtures `metadata/valid.json` lists, rendered from the valid folders the same way;
  test    the synthesized soundscapes with their oracle targets `{soundscape}_{k}_{Label}.wav`
          or `{soundscape}_{Label}.wav` (mono, the dry source of the reference channel);
  eval    the evaluation soundscapes, without labels.
Columns: `waveform` (N, 4, S) float32, `labels` (N, K) (silence = 18), `sources` (N, K, S),
`metadata` (the mixture's JSON: ours for rendered splits, the oracle files for `test`),
`filename`, `index`. File columns are read when a batch asks for them; every file is checked
when the split is opened (rate, channels, length, labels), and a problem is an error naming it.
"""
from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import re
from typing import Dict, List, Sequence, Tuple

import numpy as np
import soundfile

from jax_asc.data import audio_io, s5_mixing
from jax_asc.data import dataset as dataset_lib

CLASSES = ("AlarmClock", "BicycleBell", "Blender", "Buzzer", "Clapping", "Cough",
           "CupboardOpenClose", "Dishes", "Doorbell", "FootSteps", "HairDryer", "MechanicalFans",
           "MusicalKeyboard", "Percussion", "Pour", "Speech", "Typing", "VacuumCleaner")
SILENCE = len(CLASSES)
SAMPLE_RATE = 32000
CHANNELS = 4
SPLITS = ("train", "valid", "test", "eval")


def _wavs(folder: str, recursive: bool = False) -> List[str]:
  pattern = os.path.join(folder, "**", "*") if recursive else os.path.join(folder, "*")
  return sorted(p for p in glob.glob(pattern, recursive=recursive)
                if p.endswith((".wav", ".flac")))


def _frames(path: str, channels: int, where: str) -> int:
  """Frames of an audio file after checking its rate and channel count."""
  if not os.path.exists(path):
    raise audio_io.BadAudioError(path, f"listed by {where} but missing on disk")
  try:
    info = soundfile.info(path)
  except (RuntimeError, soundfile.LibsndfileError) as error:
    raise audio_io.BadAudioError(path, f"unreadable audio ({error})") from error
  if info.samplerate != SAMPLE_RATE:
    raise audio_io.BadAudioError(path, f"sample rate {info.samplerate} Hz, expected "
                                 f"{SAMPLE_RATE} Hz")
  if info.channels != channels:
    raise audio_io.BadAudioError(path, f"{info.channels} channel(s), expected {channels}")
  return int(info.frames)


def read_sofa(path: str):
  """(positions (M, 3) cartesian, impulse-response dataset (M, R, N) read lazily, sample rate)
  of a SOFA file (netCDF-4 / HDF5: `Data.IR`, `SourcePosition` with its `Type` attribute,
  `Data.SamplingRate`). Spherical positions (azimuth, elevation in degrees, radius) are
  converted as SOFA defines them."""
  import h5py
  if not os.path.exists(path):
    raise FileNotFoundError(f"SOFA file {path} does not exist")
  try:
    f = h5py.File(path, "r")
  except OSError as error:
    raise ValueError(f"{path}: not a readable SOFA (HDF5) file ({error})") from error
  for key in ("Data.IR", "SourcePosition", "Data.SamplingRate"):
    if key not in f:
      raise ValueError(f"{path}: SOFA variable {key!r} missing; has {sorted(f.keys())}")
  positions = np.asarray(f["SourcePosition"], np.float64)
  kind = f["SourcePosition"].attrs.get("Type", b"cartesian")
  kind = kind.decode() if isinstance(kind, bytes) else str(kind)
  if kind.lower().startswith("spherical"):
    positions = s5_mixing.unit_vectors(positions[:, 0], positions[:, 1]) * positions[:, 2:3]
  irs = f["Data.IR"]
  if irs.ndim != 3 or positions.shape != (irs.shape[0], 3):
    raise ValueError(f"{path}: Data.IR {irs.shape} and SourcePosition {positions.shape} do not "
                     f"fit (M, R, N) and (M, 3)")
  rate = int(np.asarray(f["Data.SamplingRate"]).ravel()[0])
  return positions, irs, rate


def _files_digest(paths: Sequence[str], root: str) -> str:
  h = hashlib.sha256()
  for path in paths:
    h.update(f"{os.path.relpath(path, root)}|{os.path.getsize(path)}\n".encode())
  return h.hexdigest()[:16]


class SofaRooms:
  """The `room_ir/<part>/*.sofa` rooms (sorted by name); impulse responses read per position
  and resampled to 32 kHz when the file's rate differs."""
  channels = CHANNELS

  def __init__(self, folder: str):
    self.paths = sorted(glob.glob(os.path.join(folder, "*.sofa")))
    if not self.paths:
      raise FileNotFoundError(f"no .sofa room impulse responses in {folder}")
    self.impulse_response = functools.lru_cache(maxsize=64)(self._impulse_response)

  def num_rooms(self) -> int:
    return len(self.paths)

  @functools.cached_property
  def _digest(self) -> str:
    return _files_digest(self.paths, os.path.dirname(self.paths[0]))

  def fingerprint(self) -> str:
    """The SOFA files' names and sizes, in index order (read once)."""
    return self._digest

  @functools.lru_cache(maxsize=None)
  def _open(self, room: int):
    positions, irs, rate = read_sofa(self.paths[room])
    if irs.shape[1] != CHANNELS:
      raise ValueError(f"{self.paths[room]}: impulse responses of {irs.shape[1]} channels, "
                       f"expected {CHANNELS}")
    return positions, irs, rate

  def directions(self, room: int) -> np.ndarray:
    return self._open(room)[0]

  def _impulse_response(self, room: int, position: int) -> np.ndarray:
    _, irs, rate = self._open(room)
    return audio_io.resample(np.asarray(irs[position], np.float32), rate, SAMPLE_RATE,
                             "soxr_hq")

  def position_index(self, room: int, position: Sequence[float], where: str) -> int:
    """The index of `position` (x, y, z) among room `room`'s (SpAudSyn matches to 1e-6)."""
    hits = np.flatnonzero(np.all(np.isclose(self.directions(room), position, atol=1e-6), -1))
    if not len(hits):
      raise ValueError(f"{where}: position {list(position)} is not one of "
                       f"{self.paths[room]}'s impulse-response positions")
    return int(hits[0])


class FolderPools:
  """The sound events, interferers and backgrounds of one part ("train" or "valid")."""
  num_classes = len(CLASSES)

  def __init__(self, dev_root: str, part: str):
    events_dir = os.path.join(dev_root, "sound_event", part)
    if not os.path.isdir(events_dir):
      raise FileNotFoundError(f"{events_dir} does not exist: data.root must hold dev_set/")
    unknown = sorted(set(os.listdir(events_dir)) - set(CLASSES))
    if unknown:
      raise ValueError(f"{events_dir}: unknown class folder(s) {unknown}; the classes are "
                       f"{list(CLASSES)}")
    self.event_files = [_wavs(os.path.join(events_dir, c), recursive=True) for c in CLASSES]
    empty = [c for c, files in zip(CLASSES, self.event_files) if not files]
    if empty:
      raise FileNotFoundError(f"{events_dir}: no audio for class(es) {empty}: every class of "
                              f"the task needs its sound events (in <Class>/…/*.wav)")
    int_dir = os.path.join(dev_root, "interference", part)
    self.interferer_files = _wavs(int_dir, recursive=True) if os.path.isdir(int_dir) else []
    labels = [os.path.relpath(p, int_dir).split(os.sep)[0] for p in self.interferer_files]
    self._interferer_groups = [[i for i, l in enumerate(labels) if l == label]
                               for label in sorted(set(labels))]
    self.events_dir = events_dir
    self.background_files = _wavs(os.path.join(dev_root, "noise", part))
    self.roots = {"foreground": events_dir, "interference": int_dir,
                  "background": os.path.join(dev_root, "noise", part)}
    self.clip = functools.lru_cache(maxsize=256)(self._clip)
    self.interferer = functools.lru_cache(maxsize=64)(self._interferer)

  def num_clips(self, label: int) -> int:
    return len(self.event_files[label])

  @functools.cached_property
  def _digest(self) -> str:
    files = [p for group in self.event_files for p in group]
    return _files_digest(files + self.interferer_files + self.background_files,
                         os.path.dirname(os.path.dirname(self.events_dir)))

  def fingerprint(self) -> str:
    """Every clip's path (below dev_set/) and size, in index order: a file added, removed or
    changed in size shifts or changes what a mixture's indices point at. Read once (every
    epoch's mixtures carry it)."""
    return self._digest

  def clip_group(self, label: int, clip: int) -> str:
    """The clip's first subfolder under its class folder (its source: SpAudSyn's
    `exclusion_folder_depth` 1), or the file itself when it lies in the class folder."""
    return self._groups(label)[clip]

  @functools.lru_cache(maxsize=None)
  def _groups(self, label: int) -> Tuple[str, ...]:
    class_dir = os.path.join(self.events_dir, CLASSES[label])
    return tuple(os.path.relpath(p, class_dir).split(os.sep)[0]
                 for p in self.event_files[label])

  def interferer_groups(self) -> List[List[int]]:
    """Interferer clips by their label folder."""
    return self._interferer_groups

  @functools.lru_cache(maxsize=None)
  def clip_length(self, label: int, clip: int) -> int:
    return _frames(self.event_files[label][clip], 1, "the sound-event folder")

  def _clip(self, label: int, clip: int) -> np.ndarray:
    return audio_io.read_audio(self.event_files[label][clip], expected_sample_rate=SAMPLE_RATE,
                               expected_channels=1)[0]

  def num_interferers(self) -> int:
    return len(self.interferer_files)

  @functools.lru_cache(maxsize=None)
  def interferer_length(self, clip: int) -> int:
    return _frames(self.interferer_files[clip], 1, "the interference folder")

  def _interferer(self, clip: int) -> np.ndarray:
    return audio_io.read_audio(self.interferer_files[clip], expected_sample_rate=SAMPLE_RATE,
                               expected_channels=1)[0]

  def num_backgrounds(self, room: int) -> int:
    return len(self.background_files)

  @functools.lru_cache(maxsize=None)
  def background_length(self, room: int, clip: int) -> int:
    return _frames(self.background_files[clip], CHANNELS, "the noise folder")

  def background(self, room: int, clip: int, start: int, num_samples: int,
                 channels: int) -> np.ndarray:
    noise, _ = audio_io.read_audio(self.background_files[clip], expected_sample_rate=SAMPLE_RATE,
                                   expected_channels=channels, keep_channels=True)
    noise = noise[:, start:start + num_samples]
    reps = -(-num_samples // noise.shape[-1])
    return np.tile(noise, (1, reps))[:, :num_samples]   # SpAudSyn tiles a short background

  def index_of(self, role: str, source_file: str, label=None, where: str = "") -> int:
    """The pool index of a metadata `source_file` (relative to the role's folder)."""
    files = {"foreground": self.event_files[CLASSES.index(label)] if label in CLASSES else None,
             "interference": self.interferer_files,
             "background": self.background_files}[role]
    if files is None:
      raise ValueError(f"{where}: unknown class {label!r}; the classes are {list(CLASSES)}")
    path = os.path.normpath(os.path.join(self.roots[role], source_file))
    try:
      return [os.path.normpath(p) for p in files].index(path)
    except ValueError:
      raise audio_io.BadAudioError(path, f"listed by {where} but missing on disk") from None


def _dev_path(dev_root: str, path: str) -> str:
  """A metadata path ('data/dev_set/room_ir/valid/x.sofa', relative to the baseline's checkout)
  under our `dev_root`."""
  parts = os.path.normpath(path).split(os.sep)
  if "dev_set" in parts:
    return os.path.join(dev_root, *parts[parts.index("dev_set") + 1:])
  return os.path.join(dev_root, path)


def spec_from_metadata(meta: dict, pools: FolderPools, rooms: SofaRooms, dev_root: str,
                       settings: s5_mixing.MixtureSettings, where: str) -> s5_mixing.MixtureSpec:
  """Our `MixtureSpec` of one SpAudSyn metadata file (`config`, `fg_events`, `int_events`,
  `bg_events`, `room`): clips and rooms by file, positions by their (x, y, z)."""
  sr = settings.sample_rate
  declared = meta.get("config", {})
  for key, ours in (("sr", sr), ("duration", settings.duration_s), ("ref_db", settings.ref_db)):
    if key in declared and float(declared[key]) != float(ours):
      raise ValueError(f"{where}: config.{key} is {declared[key]}, this run mixes at {ours} "
                       f"(data.s5 / the task's settings)")
  try:
    sofa = meta["room"]["args"]["metadata"]["sofa_path"]
  except (KeyError, TypeError):
    raise ValueError(f"{where}: no room.args.metadata.sofa_path") from None
  sofa = os.path.normpath(_dev_path(dev_root, sofa))
  paths = [os.path.normpath(p) for p in rooms.paths]
  if sofa not in paths:
    raise FileNotFoundError(f"{where}: room {sofa} is not among {len(paths)} .sofa files")
  room = paths.index(sofa)

  def event(e, role):
    label = e.get("label")
    index = pools.index_of(role, e["source_file"], label, where)
    clip_start = int(float(e.get("source_time") or 0) * sr)
    length = min(int(float(e["event_duration"]) * sr), settings.num_samples)
    return s5_mixing.Event(
        label=CLASSES.index(label) if role == "foreground" else -1, clip=index,
        clip_start=clip_start, onset=int(float(e["event_time"]) * sr), length=length,
        position=rooms.position_index(room, e["event_position"][0], where),
        snr_db=float(e["snr"]))

  events = tuple(event(e, "foreground") for e in meta.get("fg_events", []))
  if len(events) > settings.num_tracks:
    raise ValueError(f"{where}: {len(events)} target events, more than {settings.num_tracks} "
                     f"tracks")
  interferers = tuple(event(e, "interference") for e in meta.get("int_events", []))
  backgrounds = meta.get("bg_events", [])
  if len(backgrounds) != 1:
    raise ValueError(f"{where}: {len(backgrounds)} background events, expected 1")
  bg = backgrounds[0]
  return s5_mixing.MixtureSpec(
      events=events, interferers=interferers,
      background=pools.index_of("background", bg["source_file"], None, where), room=room,
      background_start=int(float(bg.get("source_time") or 0)) * sr)


class FileColumn:
  """An audio column read from files when indexed: row i is `read(i)` (C, S) float32."""
  lazy = True

  def __init__(self, read, shape):
    self.read, self._shape = read, tuple(shape)

  shape = property(lambda self: self._shape)
  dtype = property(lambda self: np.dtype(np.float32))
  ndim = property(lambda self: len(self._shape))

  def __len__(self) -> int:
    return self._shape[0]

  def __getitem__(self, key):
    rows = np.arange(len(self))[key]
    single = np.ndim(rows) == 0
    out = np.zeros((np.size(rows),) + self._shape[1:], np.float32)
    for k, row in enumerate(np.atleast_1d(rows)):
      out[k] = self.read(int(row))
    return out[0] if single else out

  def __array__(self, dtype=None, copy=None):
    out = self[np.arange(len(self))]
    return out if dtype is None else out.astype(dtype)


_TARGET = re.compile(r"^(?P<mixture>.+?)(?:_(?P<k>\d+))?_(?P<label>[A-Za-z]+)\.wav$")


def soundscapes(folder: str, oracle_folder: str = "", num_tracks: int = 3):
  """(waveform column, labels (N, K) or None, sources column or None, names, metadata) of a
  folder of soundscapes and, when given, their oracle targets."""
  paths = _wavs(folder)
  if not paths:
    raise FileNotFoundError(f"no soundscape .wav files in {folder}")
  names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
  lengths = {_frames(p, CHANNELS, folder) for p in paths}
  if len(lengths) != 1:
    raise ValueError(f"{folder}: soundscapes of different lengths {sorted(lengths)} samples")
  length = lengths.pop()

  def read_mixture(i):
    return audio_io.read_audio(paths[i], expected_sample_rate=SAMPLE_RATE,
                               expected_channels=CHANNELS, keep_channels=True)[0]

  waveform = FileColumn(read_mixture, (len(paths), CHANNELS, length))
  if not oracle_folder:
    return waveform, None, None, names, np.array(["{}"] * len(names))
  targets: Dict[str, List[str]] = {n: [] for n in names}
  for path in _wavs(oracle_folder):
    base = os.path.basename(path)
    owner = next((n for n in sorted(names, key=len, reverse=True)
                  if base.startswith(n + "_")), None)
    match = _TARGET.match(base)
    if owner is None or match is None:
      raise ValueError(f"{path}: not an oracle target of any soundscape in {folder} "
                       f"(expected <soundscape>_<k>_<Label>.wav or <soundscape>_<Label>.wav)")
    targets[owner].append(path)
  labels = np.full((len(names), num_tracks), SILENCE, np.int32)
  track_paths: List[List[str]] = []
  for i, name in enumerate(names):
    files = sorted(targets[name])
    if len(files) > num_tracks:
      raise ValueError(f"{oracle_folder}: {name} has {len(files)} oracle targets, more than "
                       f"{num_tracks} tracks")
    for k, path in enumerate(files):
      label = os.path.splitext(os.path.basename(path))[0].rsplit("_", 1)[-1]
      if label not in CLASSES:
        raise ValueError(f"{path}: unknown class {label!r}; the classes are {list(CLASSES)}")
      if _frames(path, 1, oracle_folder) != length:
        raise ValueError(f"{path}: oracle target length differs from its soundscape's {length}")
      labels[i, k] = CLASSES.index(label)
    track_paths.append(files)

  def read_sources(i):
    out = np.zeros((num_tracks, length), np.float32)
    for k, path in enumerate(track_paths[i]):
      out[k] = audio_io.read_audio(path, expected_sample_rate=SAMPLE_RATE,
                                   expected_channels=1)[0]
    return out

  sources = FileColumn(read_sources, (len(paths), num_tracks, length))
  metadata = np.array([json.dumps({"oracle_targets": [os.path.basename(p) for p in files]})
                       for files in track_paths])
  return waveform, labels, sources, names, metadata


def settings(cfg) -> s5_mixing.MixtureSettings:
  """Mixing settings of `cfg` (`data.s5`): duration and `min_events` of the training mixtures
  drawn on the fly (0 for the tagger, 1 for the separator, as the task); valid and test are
  the listed mixtures whatever it says."""
  return s5_mixing.MixtureSettings(duration_s=float(cfg.duration_s), sample_rate=SAMPLE_RATE,
                                   event_range=(int(cfg.get("min_events", 0)), 3))


def load(root: str, split: str, cfg) -> dataset_lib.Split:
  """Split `split` (`SPLITS`) of the task's data folder `root`; cfg: the `data.s5` settings
  (seed, num_train, duration_s, min_events)."""
  dev_root = os.path.join(root, "dev_set")
  mix = settings(cfg)
  if split == "train":
    pools, rooms = FolderPools(dev_root, split), SofaRooms(os.path.join(dev_root, "room_ir",
                                                                        split))
    count = int(cfg.num_train)

    fresh = bool(cfg.get("on_the_fly_train", True))

    def epoch_split(epoch: int) -> dataset_lib.Split:
      return dataset_lib.Split(
          name=split, columns=s5_mixing.drawn_columns(cfg.seed, "train", count, pools, rooms,
                                                      mix, epoch),
          classes=CLASSES, devices=(), sample_rate=SAMPLE_RATE, dataset="dcase26t4",
          per_epoch=epoch_split if fresh else None)
    return epoch_split(0)
  if split == "valid":
    pools, rooms = FolderPools(dev_root, split), SofaRooms(os.path.join(dev_root, "room_ir",
                                                                        split))
    listing = os.path.join(dev_root, "metadata", "valid.json")
    if not os.path.exists(listing):
      raise FileNotFoundError(f"{listing} does not exist")
    with open(listing) as f:
      entries = json.load(f)
    specs, names = [], []
    for n, entry in enumerate(entries):
      path = os.path.join(os.path.dirname(listing), entry["metadata_path"])
      with open(path) as f:
        meta = json.load(f)
      specs.append(spec_from_metadata(meta, pools, rooms, dev_root, mix,
                                      f"{listing} entry {n} ({path})"))
      names.append(os.path.splitext(os.path.basename(path))[0])
    columns = s5_mixing.Renderer(specs, pools, rooms, mix).columns()
  elif split in ("test", "eval"):
    if split == "test":
      base = os.path.join(dev_root, "synthesized", "test")
      oracle = os.path.join(base, "oracle_target")
    else:
      base, oracle = os.path.join(root, "eval_set", "synthesized", "eval"), ""
    waveform, labels, sources, names, metadata = soundscapes(
        os.path.join(base, "soundscape"), oracle, mix.num_tracks)
    columns = {"waveform": waveform, "metadata": metadata}
    if labels is not None:
      columns.update(labels=labels, sources=sources)
  else:
    raise ValueError(f"dcase26t4 splits are {SPLITS}, got {split!r}")
  columns.update(filename=np.array(names), index=np.arange(len(names), dtype=np.int32))
  return dataset_lib.Split(name=split, columns=columns, classes=CLASSES, devices=(),
                           sample_rate=SAMPLE_RATE, dataset="dcase26t4")
