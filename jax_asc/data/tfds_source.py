"""`data.source = "tfds"`: splits read from the records `tfds_builders.py` wrote under
`data.tfds_dir` (any path TF reads, a bucket included) instead of the dataset's wav files.

A split comes back as the files source gives it (same columns, classes, devices, skipped files):
the small columns from the dataset's metadata, each audio column (the waveform; S5 also the dry
`sources`) as a `RecordColumn` that reads the rows a batch asks for by random access
(ArrayRecord). The pipelines are the same: every host
draws the one global order of an epoch from (seed, epoch), takes its own slice of every global
batch and reads only those records, so the hosts read disjoint shards, a run resumes mid-epoch
exactly like one on files, and a run gives the same batches from either source on any number of
hosts (`tfds.split_for_jax_process`'s contiguous shards would tie the order to the host count).

Which config: the one whose settings are the run's (`tfds_builders.config_name` of
data.sample_rate, resampler, cache_dtype, keep_channels, skip_bad_files; the synthetic scenes by
data.synthetic, the S5 mixtures by data.s5). With data.segment_seconds > 0, a config stored as segments of that length is
read when built, else the whole clips, cut as the files source cuts them: the same examples.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds
from tensorflow.core.example import example_pb2

from jax_asc.data import formats, tfds_builders
from jax_asc.data.dataset import Split

BUILD_COMMAND = "python -m jax_asc.build_tfds --config <the run's config> --data_dir {}"


class RecordColumn:
  """Column `feature` of the records of a TFDS ArrayRecord data source, read only when indexed.

  Row i of the column is record `records[i]` of `source` (a data source that returns the
  serialized `tf.train.Example`s, `DeserializeMethod.RAW_BYTES`); its `feature` holds the raw
  bytes of a (*shape) `dtype` array (`Encoding.BYTES`). `column[rows]` reads those records by
  random access and returns them stacked, (len(rows), *shape): parsing the bytes here is 2×
  faster than TFDS's per-record decoding of every feature. Each record's filename is checked
  against `filenames` (the metadata's), so records and metadata that disagree are an error,
  never a wrong label.
  """
  lazy = True   # `dataset.take_rows` and `RowView` index it instead of reading it whole

  def __init__(self, source, feature: str, shape: tuple, dtype, filenames: np.ndarray,
               where: str, records: Optional[np.ndarray] = None):
    self.source, self.feature, self.where = source, feature, where
    self._shape, self._dtype = (len(filenames),) + tuple(shape), np.dtype(dtype)
    self.filenames = filenames
    self.records = np.arange(len(filenames)) if records is None else np.asarray(records)

  @property
  def shape(self):
    return self._shape

  @property
  def dtype(self):
    return self._dtype

  @property
  def ndim(self):
    return len(self._shape)

  def __len__(self) -> int:
    return self._shape[0]

  def __getitem__(self, key):
    rows = np.arange(len(self))[key]
    single = np.ndim(rows) == 0
    rows = np.atleast_1d(rows)
    serialized = self.source.__getitems__(self.records[rows].tolist()) if len(rows) else []
    out = np.empty((len(rows),) + self._shape[1:], self._dtype)
    for k, (row, record) in enumerate(zip(rows, serialized)):
      features = example_pb2.Example.FromString(record).features.feature
      name = features["filename"].bytes_list.value[0].decode()
      if name != self.filenames[row]:
        raise ValueError(f"{self.where}: record {self.records[row]} is {name!r} but the "
                         f"dataset's metadata lists {self.filenames[row]!r} there: rebuild the "
                         f"dataset")
      out[k] = np.frombuffer(features[self.feature].bytes_list.value[0],
                             self._dtype).reshape(self._shape[1:])
    return out[0] if single else out

  def __array__(self, dtype=None, copy=None):
    out = self[np.arange(len(self))]
    return out if dtype is None else out.astype(dtype)


# The small columns of records written before the metadata named them; string columns.
CLASSIC_SMALL = ("label", "recording_device", "identifier", "filename", "index")
HOST_COLUMNS = ("identifier", "filename", "metadata")


def tfds_splits(cfg, split: str) -> Tuple[List[str], Optional[str]]:
  """(the TFDS split(s) that make the run's split `split` of `cfg.name`, the split's name when
  they are several: the files source's list name)."""
  name = cfg.name
  if name in ("tau22", "tau20"):
    return [formats.TAU_SPLIT_ALIASES.get(split, split)], None
  if name == "tut17":
    return [f"fold{int(cfg.tut17_fold)}_{split}"], None
  if name == "icme24" and split == "all":   # TFDS reserves "all"
    return ["development"], None
  if name == "esc50":
    folds = formats.esc50_folds(split)
    joined = "folds" + "".join(map(str, folds)) if len(folds) > 1 else None
    return [f"fold{k}" for k in folds], joined
  return [split], None


def builder_configs(cfg) -> List[object]:
  """The builder configs holding the run's data, the preferred first."""
  seconds = float(getattr(cfg, "segment_seconds", 0.0) or 0.0)
  if cfg.name in ("s5_synthetic", "dcase26t4"):
    s = cfg.s5
    synthetic = cfg.name == "s5_synthetic"
    return [tfds_builders.S5Config(
        name="", seed=int(s.seed), num_train=int(s.num_train),
        num_validation=int(s.num_validation) if synthetic else 0,
        num_test=int(s.num_test) if synthetic else 0, duration_s=float(s.duration_s),
        min_events=int(s.get("min_events", 0)),
        clips_per_class=int(s.clips_per_class) if synthetic else 0,
        rooms=int(s.rooms) if synthetic else 0)]
  if cfg.name == "synthetic":
    s = cfg.synthetic
    make = lambda seg: tfds_builders.SyntheticConfig(
        name="", seed=int(s.seed), num_train=int(s.num_train),
        num_validation=int(s.num_validation), num_test=int(s.num_test),
        clip_seconds=float(s.clip_seconds), segment_seconds=seg)
  else:
    make = lambda seg: tfds_builders.AudioConfig(
        name="", sample_rate=int(cfg.sample_rate), resampler=cfg.resampler,
        dtype=cfg.cache_dtype, keep_channels=bool(getattr(cfg, "keep_channels", False)),
        segment_seconds=seg, skip_bad_files=bool(cfg.skip_bad_files))
  return ([make(seconds)] if seconds else []) + [make(0.0)]


def _builder(cfg):
  if not cfg.tfds_dir:
    raise ValueError("data.source='tfds' needs data.tfds_dir: the folder the dataset was built "
                     "into (" + BUILD_COMMAND.format("DIR") + ")")
  tried = []
  for config in builder_configs(cfg):
    builder = tfds_builders.make_builder(cfg.name, config, cfg.tfds_dir)
    if builder.is_prepared():
      file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
      if file_format != "array_record":
        raise ValueError(f"{builder.data_dir} was built as {file_format} records; jax_asc reads "
                         f"rows by random access: rebuild with --file_format array_record")
      return builder
    tried.append(config.name)
  cls = tfds_builders.BUILDERS[cfg.name]
  raise FileNotFoundError(
      f"no TFDS dataset {cls.name} with config {' or '.join(tried)} (version {cls.VERSION}) "
      f"under data.tfds_dir {cfg.tfds_dir!r}: build it once with "
      + BUILD_COMMAND.format(cfg.tfds_dir))


def _joined(meta: dict, parts: Sequence[str]) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
  """The small columns of stored splits `parts` joined as the files source lists them, and the
  record (in the parts' concatenation) of each row.

  Each part stores `listed`, the list position (in the dataset's whole list) of every example
  its list named, skipped ones included; row r's example is listed[index[r] // segments]. The
  joined rows are in list order and their ids are the files source's: the example's position
  among the parts' listed examples (skipped ones leave their gap), times segments, plus the
  piece.
  """
  stored = [meta["splits"][p] for p in parts]
  missing = [p for p, s in zip(parts, stored) if "listed" not in s]
  if missing:
    raise ValueError(f"stored splits {missing} carry no list positions: they cannot be joined")
  columns = {k: np.concatenate([np.asarray(s[k]) for s in stored])
             for k in ("label", "recording_device", "identifier", "filename", "index")}
  pieces = int(stored[0].get("segments", 1))
  position = np.concatenate([np.asarray(s["listed"], np.int64)[np.asarray(s["index"]) // pieces]
                             for s in stored])
  piece = columns["index"].astype(np.int64) % pieces
  listed = np.sort(np.concatenate([np.asarray(s["listed"], np.int64) for s in stored]))
  order = np.lexsort((piece, position))
  columns = {k: v[order] for k, v in columns.items()}
  columns["index"] = (np.searchsorted(listed, position[order]) * pieces + piece[order])
  return columns, order


def load(cfg, names: Sequence[str]) -> Dict[str, Split]:
  """{split name: Split} of `cfg.name` from the records under `cfg.tfds_dir` (no segments, no
  holdout: `data.load_splits` derives those as for files)."""
  builder = _builder(cfg)
  info = builder.info
  meta = info.metadata
  if int(meta["sample_rate"]) != int(cfg.sample_rate):
    raise ValueError(f"data.sample_rate is {cfg.sample_rate}; {builder.data_dir} holds "
                     f"{meta['sample_rate']} Hz audio")
  out = {}
  for name in dict.fromkeys(names):
    if (cfg.name in ("s5_synthetic", "dcase26t4") and name == "train"
        and bool(cfg.s5.get("on_the_fly_train", cfg.name == "dcase26t4"))):
      raise ValueError(f"data.s5.on_the_fly_train asks for new {cfg.name} training mixtures "
                       f"every epoch, but {builder.data_dir} holds one epoch's: set "
                       f"data.s5.on_the_fly_train=False to train on those, or data.source="
                       f"'files' to draw them")
    parts, joined_name = tfds_splits(cfg, name)
    missing = [p for p in parts if p not in info.splits]
    if missing:
      raise KeyError(f"{builder.data_dir} has splits {sorted(info.splits)}; split {name!r} needs "
                     f"{missing}")
    kinds = meta.get("columns", {"small": list(CLASSIC_SMALL), "audio": ["waveform"]})
    if len(parts) == 1:
      stored = meta["splits"][parts[0]]
      columns = {k: np.asarray(stored[k]) for k in kinds["small"]}
      records = None
    else:
      columns, records = _joined(meta, parts)
    arrays = {k: v.astype(str) if k in HOST_COLUMNS else v.astype(np.int32)
              for k, v in columns.items()}
    source = builder.as_data_source("+".join(parts),
                                    deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    if len(source) != len(arrays["filename"]):
      raise ValueError(f"{builder.data_dir}/{name}: {len(source)} records but the metadata lists "
                       f"{len(arrays['filename'])}: rebuild the dataset")
    for audio in kinds["audio"]:
      feature = info.features[audio]
      arrays[audio] = RecordColumn(source, audio, feature.shape, feature.np_dtype,
                                   arrays["filename"], f"{builder.data_dir}/{name}", records)
    skipped = [tuple(item) for p in parts for item in meta["splits"][p]["skipped"]]
    out[name] = Split(name=joined_name or meta["splits"][parts[0]]["name"], columns=arrays,
                      classes=tuple(meta["classes"]), devices=tuple(meta["devices"]),
                      sample_rate=int(meta["sample_rate"]),
                      waveform_scale=float(meta["waveform_scale"]), skipped=skipped,
                      dataset=meta["dataset"])
  return out
