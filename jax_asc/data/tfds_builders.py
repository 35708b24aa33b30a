"""TFDS builders for every dataset jax_asc reads, so a pod streams records instead of wav files.

Each builder reads the dataset's folder (`--manual_dir`) with the same readers as
`data.source = "files"` (`jax_asc.data.read_split`: the same validation, resampling and cache),
and writes every split as records, one per example, with the columns of `dataset.COLUMNS`:

  waveform          Tensor (C, S) at the config's rate, stored as the files source holds it
                    (float32 / float16; the synthetic scenes int16 PCM, `waveform_scale` in
                    the metadata)
  label             ClassLabel of the dataset's classes (−1 = unlabelled)
  recording_device  ClassLabel of the dataset's devices
  identifier, filename  Text;  index  int32

Records are written in row order (`disable_shuffling`), the waveform as raw bytes
(`Encoding.BYTES`), and the dataset's metadata (`metadata.json`) holds every split's small
columns, its list name, segments per clip and skipped bad files, so `data/tfds_source.py` reads
a split's labels without reading its audio, and any row by random access (ArrayRecord). Build
once, with the ArrayRecord format, from a run's config (`python -m jax_asc.build_tfds`), or
with TFDS's command line where it runs (4.9.10's needs apache-beam):

    tfds build jax_asc_tau22 --imports jax_asc.data.tfds_builders \\
        --manual_dir /data/TAU-urban-acoustic-scenes-2022-mobile-development \\
        --data_dir gs://bucket/tfds --file_format array_record --config 32000hz

Configs (`AudioConfig`): sample_rate, resampler, dtype, keep_channels, segment_seconds,
skip_bad_files; the name says them (`config_name`), and a config not listed in
`BUILDER_CONFIGS` is asked for as JSON (`--config '{"name": "22050hz", "sample_rate": 22050}'`).
The synthetic scenes' configs (`SyntheticConfig`) are named by their sizes.
"""
from __future__ import annotations

import abc
import dataclasses
import os
import types
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds

from jax_asc import data as data_lib
from jax_asc.data import derived, formats, s5_dcase, s5_synthetic, synthetic
from jax_asc.data.dataset import Split

PREFIX = "jax_asc_"   # TFDS names: jax_asc_<data.name>
RELEASE_NOTES = {"1.0.0": "First release: every column of jax_asc's readers, row order kept, "
                          "small columns and skipped files in the metadata."}
DTYPES = ("float32", "float16")
TAU22_SPLITS = ("fold1_train", "fold1_evaluate", "fold1_test", "split5", "split10", "split25",
                "split50", "split100", "test")


def config_name(sample_rate: int, resampler: str = "sinc_hann", dtype: str = "float32",
                keep_channels: bool = False, segment_seconds: float = 0.0,
                skip_bad_files: bool = False) -> str:
  """The name of the audio config with these settings, e.g. `32000hz`, `32000hz_seg1s`."""
  name = f"{int(sample_rate)}hz"
  if keep_channels:
    name += "_channels"
  if dtype != "float32":
    name += f"_{dtype}"
  if resampler != "sinc_hann":
    name += f"_{resampler}"
  name += _segments(segment_seconds)
  if skip_bad_files:
    name += "_skip_bad_files"
  return name


def synthetic_config_name(seed: int, num_train: int, num_validation: int, num_test: int,
                          clip_seconds: float = 1.0, segment_seconds: float = 0.0) -> str:
  """The name of the synthetic config with these sizes, e.g. `seed0_4000_600_1800_1s`."""
  return (f"seed{int(seed)}_{int(num_train)}_{int(num_validation)}_{int(num_test)}_"
          f"{float(clip_seconds):g}s".replace(".", "p") + _segments(segment_seconds))


def _segments(seconds: float) -> str:
  return f"_seg{float(seconds):g}s".replace(".", "p") if seconds else ""


def _settle_name(config, expected: str) -> None:
  """Fills in an empty config name with `expected`; any other name must be it."""
  if not config.name:
    config.name = expected
  elif config.name != expected:
    raise ValueError(f"config name {config.name!r} does not match its settings: expected "
                     f"{expected!r}")


@dataclasses.dataclass(eq=False)
class AudioConfig(tfds.core.BuilderConfig):
  """The audio settings of a real dataset's records (`data.*` keys of the same names;
  dtype = `data.cache_dtype`). An empty name is filled in from the settings."""
  sample_rate: int = 32000
  resampler: str = "sinc_hann"
  dtype: str = "float32"
  keep_channels: bool = False
  segment_seconds: float = 0.0
  skip_bad_files: bool = False

  def __post_init__(self):
    if self.dtype not in DTYPES:
      raise ValueError(f"{type(self).__name__}.dtype must be one of {DTYPES}, got "
                       f"{self.dtype!r}")
    _settle_name(self, config_name(self.sample_rate, self.resampler, self.dtype,
                                   self.keep_channels, self.segment_seconds,
                                   self.skip_bad_files))


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
  """The synthetic scenes' `data.synthetic` settings (32 kHz int16 PCM)."""
  seed: int = 0
  num_train: int = 4000
  num_validation: int = 600
  num_test: int = 1800
  clip_seconds: float = 1.0
  segment_seconds: float = 0.0

  def __post_init__(self):
    _settle_name(self, synthetic_config_name(self.seed, self.num_train, self.num_validation,
                                             self.num_test, self.clip_seconds,
                                             self.segment_seconds))


def _audio_configs(*rates_and_segments: Tuple[int, float]) -> List[AudioConfig]:
  return [AudioConfig(name="", sample_rate=rate, segment_seconds=seconds,
                      description=f"mono at {rate} Hz" + (f", {seconds:g}-s segments"
                                                          if seconds else ""))
          for rate, seconds in rates_and_segments]


class _Builder(tfds.core.GeneratorBasedBuilder):
  """One jax_asc dataset (`DATASET`) as TFDS records; subclasses name its splits."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = RELEASE_NOTES
  DATASET = ""                 # data.name
  CLASSES: Sequence[str] = ()
  DEVICES: Sequence[str] = formats.NO_DEVICE
  CHANNELS = 1                 # the dataset's channels (kept with keep_channels)
  CLIP_SECONDS = 1.0
  BUILDER_CONFIGS = _audio_configs((32000, 0.0), (16000, 0.0), (44100, 0.0))

  def __init__(self, *, cache_dir: str = "", split_dir: str = "", **kwargs):
    """cache_dir: the files source's cache the build reads through (`data.cache_dir`; '' =
    `$JAX_ASC_DATA_DIR` or ~/.cache/jax_asc); split_dir: TAU's DCASE 2024/25 split files
    (`data.split_dir`; '' = the manual folder)."""
    self.cache_dir, self.split_dir = cache_dir, split_dir
    super().__init__(**kwargs)

  @property
  def _clip_samples(self) -> int:
    cfg = self.builder_config
    seconds = cfg.segment_seconds or self.CLIP_SECONDS
    return int(round(seconds * cfg.sample_rate))

  def _waveform_feature(self) -> tfds.features.Tensor:
    cfg = self.builder_config
    channels = self.CHANNELS if getattr(cfg, "keep_channels", False) else 1
    return tfds.features.Tensor(shape=(channels, self._clip_samples), dtype=np.dtype(cfg.dtype),
                                encoding=tfds.features.Encoding.BYTES)

  # The columns: the small ones travel in the metadata too (a split's labels without its
  # audio); the audio ones only in the records, as raw bytes.
  SMALL: Tuple[str, ...] = ("label", "recording_device", "identifier", "filename", "index")
  AUDIO: Tuple[str, ...] = ("waveform",)

  def _features(self) -> dict:
    return {"waveform": self._waveform_feature(),
            "label": tfds.features.ClassLabel(names=list(self.CLASSES)),
            "recording_device": tfds.features.ClassLabel(names=list(self.DEVICES)),
            "identifier": tfds.features.Text(),
            "filename": tfds.features.Text(),
            "index": np.int32}

  def _info(self) -> tfds.core.DatasetInfo:
    features = tfds.features.FeaturesDict(self._features())
    return tfds.core.DatasetInfo(
        builder=self, description=(type(self).__doc__ or "").strip(), features=features,
        metadata=tfds.core.MetadataDict(), disable_shuffling=True,
        homepage="https://github.com/jax-asc/jax_asc")

  # --- what subclasses define
  @abc.abstractmethod
  def _splits(self, root: str) -> List[str]:
    """The TFDS split names this folder provides."""

  def _read(self, root: str, split: str) -> Split:
    """TFDS split `split` as the files source reads it."""
    return data_lib.read_split(self._reader_config(root), split)

  # --- shared
  def _reader_config(self, root: str, **overrides):
    cfg = self.builder_config
    values = dict(name=self.DATASET, root=root, split_dir=self.split_dir, tut17_fold=1,
                  sample_rate=cfg.sample_rate, resampler=cfg.resampler, cache_dtype=cfg.dtype,
                  keep_channels=cfg.keep_channels, skip_bad_files=cfg.skip_bad_files,
                  cache_dir=self.cache_dir)
    values.update(overrides)
    return types.SimpleNamespace(**values)

  def _split_generators(self, dl_manager):
    root = self._root(dl_manager)
    splits = self._splits(root)
    if not splits:
      raise FileNotFoundError(f"{self.name}: {root} holds none of its split lists. "
                              f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return {name: self._generate_examples(root, name) for name in splits}

  def _root(self, dl_manager) -> str:
    """The dataset's folder (the manual dir), checked."""
    root = os.fspath(dl_manager.manual_dir)
    if not os.path.isdir(root):
      raise FileNotFoundError(f"{self.name}: manual_dir {root!r} is not a folder. "
                              f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return root

  def _generate_examples(self, root: str, split_name: str):
    split, pieces = self._split(root, split_name)
    columns = _small_columns(split, self.SMALL)
    yield from _examples(split, columns, self.AUDIO)
    # Written with the dataset's info once every split is generated.
    self.info.metadata.setdefault("splits", {})[split_name] = dict(
        {k: v.tolist() for k, v in columns.items()}, name=split.name, segments=pieces,
        skipped=[list(item) for item in split.skipped], **self._list_positions(root, split_name))
    self.info.metadata.update(dataset=split.dataset, classes=list(split.classes),
                              devices=list(split.devices), sample_rate=int(split.sample_rate),
                              waveform_scale=float(split.waveform_scale),
                              columns={"small": list(self.SMALL), "audio": list(self.AUDIO)})

  def _split(self, root: str, split_name: str) -> Tuple[Split, int]:
    """(the split as records will hold it, the segments per clip)."""
    split = self._read(root, split_name)
    clip = split.num_samples
    seconds = getattr(self.builder_config, "segment_seconds", 0.0)
    if seconds:
      split = derived.segment(split, seconds, key=f"{self.name} config segment_seconds")
    unknown = sorted(set(split.columns) - set(self.SMALL) - set(self.AUDIO))
    if unknown:   # never drop a column silently
      raise ValueError(f"{self.name}/{split_name}: columns {unknown} have no feature")
    return split, clip // split.num_samples

  def _list_positions(self, root: str, split_name: str) -> dict:
    """Extra metadata of a split that runs read joined with others (`listed`: see
    `tfds_source._joined`); none by default."""
    return {}


SMALL_COLUMNS = ("label", "recording_device", "identifier", "filename", "index")


def _small_columns(split: Split, names: Sequence[str] = SMALL_COLUMNS) -> Dict[str, np.ndarray]:
  """The split's small columns `names` (label −1 and device 0 where the reader has none)."""
  n = len(split)
  defaults = dict(label=np.full(n, -1, np.int32), recording_device=np.zeros(n, np.int32),
                  identifier=np.full(n, ""))
  missing = [k for k in names if k not in split and k not in defaults]
  if missing:
    raise ValueError(f"split {split.name!r} has no column(s) {missing} to write")
  return {k: np.asarray(split.get(k, defaults.get(k))) for k in names}


def _examples(split: Split, columns: Dict[str, np.ndarray], audio: Sequence[str] = ("waveform",),
              chunk: int = 256):
  """(row, example) of every row in order, the audio columns read `chunk` rows at a time."""
  for start in range(0, len(split), chunk):
    rows = np.arange(start, min(start + chunk, len(split)))
    waves = {name: np.asarray(split[name][rows]) for name in audio}
    for k, row in enumerate(rows):
      example = {name: (column[row].tolist() if column.ndim > 1 else column[row].item())
                 for name, column in columns.items()}
      yield int(row), dict(example, **{name: wave[k] for name, wave in waves.items()})


def _exists(root: str, *parts: str) -> bool:
  return os.path.exists(os.path.join(root, *parts))


class Tau22(_Builder):
  """TAU Urban Acoustic Scenes 2022 Mobile development (1-s clips), with the DCASE 2024/2025
  split files (split5 … split100, test) as splits where they are in the folder."""
  name = PREFIX + "tau22"
  DATASET = "tau22"
  CLASSES, DEVICES = formats.TAU_CLASSES, formats.TAU_DEVICES
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download TAU-urban-acoustic-scenes-2022-mobile-development (zenodo 6337421) and unpack it "
      "into one folder (meta.csv, audio/, evaluation_setup/fold1_*.csv); the DCASE 2024 split "
      "files split5.csv … split100.csv and test.csv (DCASE2024 task 1 baseline) beside meta.csv "
      "or in data.split_dir. Pass that folder as --manual_dir.")

  def _splits(self, root):
    return [s for s in TAU22_SPLITS
            if _exists(root, "evaluation_setup", f"{s}.csv")
            or _exists(self.split_dir or root, f"{s}.csv")]


class Tau20(Tau22):
  """TAU Urban Acoustic Scenes 2020 Mobile development (10-s clips); configs of whole clips and
  of 1-s segments (`<file>@<k>`, as `data.segment_seconds = 1`)."""
  name = PREFIX + "tau20"
  DATASET = "tau20"
  CLIP_SECONDS = 10.0
  BUILDER_CONFIGS = _audio_configs((32000, 0.0), (32000, 1.0), (16000, 0.0), (16000, 1.0),
                                   (44100, 0.0))
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download TAU-urban-acoustic-scenes-2020-mobile-development (zenodo 3819968) and unpack it "
      "into one folder (meta.csv, audio/, evaluation_setup/fold1_*.csv). Pass that folder as "
      "--manual_dir.")


class Dcase25Eval(_Builder):
  """TAU Urban Acoustic Scenes 2025 Mobile evaluation set (unlabelled; the `device_id` column
  as recording_device, `unknown` for unseen devices)."""
  name = PREFIX + "dcase25_eval"
  DATASET = "dcase25_eval"
  CLASSES, DEVICES = formats.TAU_CLASSES, formats.TAU_DEVICES
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download TAU-urban-acoustic-scenes-2025-mobile-evaluation and unpack it into one folder "
      "(audio/, evaluation_setup/fold1_test.csv). Pass that folder as --manual_dir.")

  def _splits(self, root):
    return ["test"] if _exists(root, "evaluation_setup", "fold1_test.csv") else []


class Tut17(_Builder):
  """TUT Acoustic Scenes 2017 development (10-s binaural clips), the 4 folds as splits
  fold<k>_train, fold<k>_evaluate, fold<k>_test."""
  name = PREFIX + "tut17"
  DATASET = "tut17"
  CLASSES = formats.TUT17_CLASSES
  CHANNELS = 2
  CLIP_SECONDS = 10.0
  BUILDER_CONFIGS = _audio_configs((32000, 0.0), (16000, 0.0), (44100, 0.0)) + [
      AudioConfig(name="", sample_rate=32000, keep_channels=True, description="binaural")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download TUT-acoustic-scenes-2017-development (zenodo 400515) and unpack it into one "
      "folder (meta.txt, audio/, evaluation_setup/fold<k>_{train,evaluate,test}.txt). Pass that "
      "folder as --manual_dir.")

  def _splits(self, root):
    return [f"fold{k}_{s}" for k in range(1, 5) for s in ("train", "evaluate", "test")
            if _exists(root, "evaluation_setup", f"fold{k}_{s}.txt")]

  def _read(self, root, split):
    fold, name = split.split("_", 1)   # fold<k>_<list>
    return data_lib.read_split(self._reader_config(root, tut17_fold=int(fold[4:])), name)


class Icme24(_Builder):
  """ICME 2024 ASC grand challenge development set (10-s clips); splits development (every
  row, unlabelled ones with label −1: a run's `all`, a name TFDS reserves), labelled,
  unlabelled."""
  name = PREFIX + "icme24"
  DATASET = "icme24"
  CLASSES = formats.ICME24_CLASSES
  CLIP_SECONDS = 10.0
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download the ICME 2024 ASC development set and unpack it into one folder "
      "(data/ICME2024_ASC_dev_label.csv, data/ICME2024_GC_ASC_dev/*.wav). Pass that folder as "
      "--manual_dir.")

  def _splits(self, root):
    return (["development", "labelled", "unlabelled"]
            if _exists(root, "data", "ICME2024_ASC_dev_label.csv") else [])

  def _read(self, root, split):
    return super()._read(root, "all" if split == "development" else split)


class Esc50(_Builder):
  """ESC-50 (5-s clips, 50 classes); the 5 folds as splits fold1 … fold5 (a run's
  `folds1234` reads four of them)."""
  name = PREFIX + "esc50"
  DATASET = "esc50"
  CLASSES = formats.ESC50_CLASSES
  CLIP_SECONDS = 5.0
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download ESC-50 (github.com/karolpiczak/ESC-50) and unpack it into one folder "
      "(meta/esc50.csv, audio/). Pass that folder as --manual_dir.")

  def _splits(self, root):
    return [f"fold{k}" for k in range(1, 6)] if _exists(root, "meta", "esc50.csv") else []

  def _list_positions(self, root, split_name):
    # The position in meta/esc50.csv of every example fold k lists: a run's folds1234 joins
    # four folds in the csv's order with the files source's ids.
    everything = {e.filename: i for i, e in enumerate(formats.esc50(root).examples)}
    fold = formats.esc50(root, formats.esc50_folds(split_name))
    return {"listed": [everything[e.filename] for e in fold.examples]}


class Fsdd(_Builder):
  """Free Spoken Digit Dataset (8 kHz, padded to 2.5 s; the speaker as recording_device);
  splits train (takes 5–49) and test (takes 0–4)."""
  name = PREFIX + "fsdd"
  DATASET = "fsdd"
  CLASSES = tuple(str(d) for d in range(10))
  DEVICES = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
  CLIP_SECONDS = 2.5
  BUILDER_CONFIGS = _audio_configs((8000, 0.0), (16000, 0.0), (32000, 0.0))
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download the Free Spoken Digit Dataset recordings (github.com/Jakobovski/"
      "free-spoken-digit-dataset, recordings/*.wav). Pass that folder as --manual_dir.")

  def _splits(self, root):
    return ["train", "test"] if any(f.endswith(".wav") for f in os.listdir(root)) else []


class Synthetic(_Builder):
  """jax_asc's synthetic acoustic scenes (`data.synthetic`; 32 kHz int16 PCM): rendered, not
  read, so no manual folder."""
  name = PREFIX + "synthetic"
  DATASET = "synthetic"
  CLASSES, DEVICES = synthetic.CLASSES, synthetic.DEVICES
  BUILDER_CONFIGS = [
      SyntheticConfig(name="", description="base_config()'s data.synthetic"),
      SyntheticConfig(name="", num_train=2560, num_validation=400, num_test=900,
                      description="configs/quickstart.py"),
      SyntheticConfig(name="", num_train=256, num_validation=64, num_test=144,
                      description="the report chains' --smoke (configs/common.smoke)")]

  def _root(self, dl_manager) -> str:
    return ""

  @property
  def _clip_samples(self) -> int:
    cfg = self.builder_config
    return int(round((cfg.segment_seconds or cfg.clip_seconds) * synthetic.SAMPLE_RATE))

  def _waveform_feature(self):
    return tfds.features.Tensor(shape=(1, self._clip_samples), dtype=np.int16,
                                encoding=tfds.features.Encoding.BYTES)

  def _splits(self, root):
    return ["train", "validation", "test"]

  def _read(self, root, split):
    cfg = self.builder_config
    spec = types.SimpleNamespace(seed=cfg.seed, num_train=cfg.num_train,
                                 num_validation=cfg.num_validation, num_test=cfg.num_test,
                                 clip_seconds=cfg.clip_seconds)
    return synthetic.load(spec, self.cache_dir)[split]


def s5_config_name(seed: int, num_train: int, num_validation: int, num_test: int,
                   duration_s: float, min_events: int = 0, clips_per_class: int = 0,
                   rooms: int = 0) -> str:
  """The name of an S5 config, e.g. `seed0_1536_64_96_2s` (synthetic: `_12clips_4rooms`;
  separator training mixtures: `_min1`)."""
  name = (f"seed{int(seed)}_{int(num_train)}_{int(num_validation)}_{int(num_test)}_"
          f"{float(duration_s):g}s").replace(".", "p")
  if clips_per_class or rooms:
    name += f"_{int(clips_per_class)}clips_{int(rooms)}rooms"
  return name + (f"_min{int(min_events)}" if min_events else "")


@dataclasses.dataclass(eq=False)
class S5Config(tfds.core.BuilderConfig):
  """Report 004's mixtures (`data.s5` keys of the same names): the seed and number of the
  training mixtures drawn (and, synthetic, of validation and test), their duration, the least
  events of a training mixture; the synthetic set's pools."""
  seed: int = 0
  num_train: int = 1536
  num_validation: int = 0
  num_test: int = 0
  duration_s: float = 10.0
  min_events: int = 0
  clips_per_class: int = 0
  rooms: int = 0

  def __post_init__(self):
    _settle_name(self, s5_config_name(self.seed, self.num_train, self.num_validation,
                                      self.num_test, self.duration_s, self.min_events,
                                      self.clips_per_class, self.rooms))

  def settings(self) -> types.SimpleNamespace:
    """The `data.s5` section these records were written with."""
    values = {f.name: getattr(self, f.name) for f in dataclasses.fields(S5Config)
              if f.name in ("seed", "num_train", "num_validation", "num_test", "duration_s",
                            "min_events", "clips_per_class", "rooms")}
    return types.SimpleNamespace(on_the_fly_train=False, get=lambda k, d=None: values.get(k, d),
                                 **values)


class _S5Builder(_Builder):
  """Spatial mixtures with K tracks (report 004): the 4-channel mixture, the dry target of each
  track, its labels (the classes plus silence) and the mixture's JSON metadata."""
  SMALL = ("labels", "metadata", "filename", "index")
  AUDIO = ("waveform", "sources")
  CHANNELS, TRACKS = 4, 3
  DTYPE = np.float32

  @property
  def _clip_samples(self) -> int:
    return int(round(self.builder_config.duration_s * 32000))

  def _features(self) -> dict:
    audio = lambda rows: tfds.features.Tensor(shape=(rows, self._clip_samples), dtype=self.DTYPE,
                                              encoding=tfds.features.Encoding.BYTES)
    return {"waveform": audio(self.CHANNELS), "sources": audio(self.TRACKS),
            "labels": tfds.features.Sequence(
                tfds.features.ClassLabel(names=list(self.CLASSES) + ["silence"]),
                length=self.TRACKS),
            "metadata": tfds.features.Text(), "filename": tfds.features.Text(),
            "index": np.int32}

  def _reader_config(self, root: str, **overrides):
    return types.SimpleNamespace(name=self.DATASET, root=root, split_dir="", sample_rate=32000,
                                 resampler="sinc_hann", cache_dtype="float32",
                                 skip_bad_files=False, cache_dir=self.cache_dir,
                                 s5=self.builder_config.settings())


class S5Synthetic(_S5Builder):
  """jax_asc's synthetic S5 mixtures (`data.s5`, jax_asc/data/s5_synthetic.py; float16):
  rendered, not read, so no manual folder."""
  name = PREFIX + "s5_synthetic"
  DATASET = "s5_synthetic"
  CLASSES = s5_synthetic.CLASSES
  DTYPE = np.float16
  BUILDER_CONFIGS = [
      S5Config(name="", num_train=1536, num_validation=64, num_test=96, duration_s=1.0,
               clips_per_class=12, rooms=4, description="the report 004 tagger smoke chain"),
      S5Config(name="", num_train=128, num_validation=64, num_test=96, duration_s=1.0,
               min_events=1, clips_per_class=12, rooms=4,
               description="the report 004 separator smoke run")]

  def _root(self, dl_manager) -> str:
    return ""

  def _splits(self, root):
    return ["train", "validation", "test"]

  def _read(self, root, split):
    return s5_synthetic.load(self.builder_config.settings(), self.cache_dir)[split]


class Dcase26T4(_S5Builder):
  """DCASE 2026 Task 4 (S5) development set: `train`, the first `num_train` training mixtures
  the files source draws on the fly (the same rows: row i comes from (seed, i)), `valid` (the
  mixtures metadata/valid.json lists) and `test` (the synthesized soundscapes with their oracle
  targets). The evaluation soundscapes (no targets) are read from their folder
  (`data.source=files`, split `eval`)."""
  name = PREFIX + "dcase26t4"
  DATASET = "dcase26t4"
  CLASSES = s5_dcase.CLASSES
  BUILDER_CONFIGS = [S5Config(name="", num_train=25088, duration_s=10.0,
                              description="the T4 baseline's 25,088 tagger mixtures"),
                     S5Config(name="", num_train=25088, duration_s=10.0, min_events=1,
                              description="separator training mixtures (1-3 events)")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download the DCASE 2026 Task 4 development set (Zenodo 19328046) and prepare it with the "
      "baseline's scripts (nttcslab/dcase2026_task4_baseline: add_data.sh) into its data/ "
      "folder (dev_set/sound_event, interference, noise, room_ir, metadata/valid.json, "
      "synthesized/test). Pass that data/ folder as --manual_dir.")

  def _splits(self, root):
    dev = os.path.join(root, "dev_set")
    return ((["train"] if os.path.isdir(os.path.join(dev, "sound_event", "train")) else [])
            + (["valid"] if _exists(dev, "metadata", "valid.json") else [])
            + (["test"] if os.path.isdir(os.path.join(dev, "synthesized", "test",
                                                        "oracle_target")) else []))


BUILDERS: Dict[str, type] = {cls.DATASET: cls for cls in (Synthetic, Tau22, Tau20, Dcase25Eval,
                                                           Tut17, Icme24, Esc50, Fsdd,
                                                           S5Synthetic, Dcase26T4)}


def make_builder(dataset: str, config, data_dir: str, **kwargs) -> tfds.core.DatasetBuilder:
  """The builder of `dataset` (data.name) in `config` (an `AudioConfig` / `SyntheticConfig`):
  a listed config by its name (TFDS refuses an equal object of the same name), another as is."""
  if dataset not in BUILDERS:
    raise ValueError(f"data.name {dataset!r} has no TFDS builder; builders: {sorted(BUILDERS)}")
  cls = BUILDERS[dataset]
  listed = any(c.name == config.name for c in cls.BUILDER_CONFIGS)
  return cls(data_dir=data_dir, config=config.name if listed else config, **kwargs)
