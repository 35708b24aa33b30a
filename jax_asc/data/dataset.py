"""The in-memory form every dataset reader produces: one `Split` of examples with named columns.

A split is a table: every column has one row per example (first axis N). The names that mean
something to the rest of the code (`COLUMNS`):

  waveform          (N, C, S) the clip or mixture, C channels of S samples: int16 PCM (times
                    `Split.waveform_scale`), float16 or float32; mono datasets have C = 1
  label             (N,) int32 class index, −1 for an unlabelled example
  labels            (N, K) int32 classes of K event tracks (multi-label; a silence class for an
                    empty track)
  sources           (N, K, S) dry target sources, stored like the waveform
  query             (N, Q) float32 a query vector (label-queried separation)
  recording_device  (N,) int32 index into `Split.devices` (the device that recorded the clip)
  identifier        (N,) str recording location / source id (TAU `city-location`)
  filename          (N,) str, unique: the key of everything per example (caches, predictions)
  index             (N,) int32 stable integer id (the row in the split's metadata; per-example
                    memories of later losses); a skipped bad file leaves its index unused

`waveform`, `filename` and `index` are required; a reader adds whatever else it knows (a teacher
cache joined by filename adds e.g. `teacher/ensemble/logits` (N, K, C)). Numeric columns travel
in batches; string columns (filename, identifier) stay on the host. A column may be a memory map
or a lazy row view (`RowView`): nothing here reads a whole column unasked.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

COLUMNS = {
    "waveform": "(N, C, S) audio, C channels",
    "label": "(N,) int32 class, -1 unlabelled",
    "labels": "(N, K) int32 classes of K tracks",
    "sources": "(N, K, S) dry target sources",
    "query": "(N, Q) float32 query",
    "recording_device": "(N,) int32 index into Split.devices",
    "identifier": "(N,) str recording location",
    "filename": "(N,) str unique key",
    "index": "(N,) int32 stable id",
}
REQUIRED = ("waveform", "filename", "index")
# Audio columns: stored like the waveform (int16 PCM scaled by `waveform_scale`), read as
# float32, their last axis the samples (cut by `segment_seconds`).
AUDIO_COLUMNS = ("waveform", "sources")


def default_cache_dir() -> str:
  """Where datasets are cached: `$JAX_ASC_DATA_DIR`, else `~/.cache/jax_asc`."""
  return os.environ.get("JAX_ASC_DATA_DIR",
                        os.path.join(os.path.expanduser("~"), ".cache", "jax_asc"))


class RowView:
  """Rows of a larger array (a memory-mapped cache) picked or reshaped lazily.

  `base` is read only when the view is indexed: `view[rows]` reads those rows (in sorted order,
  which is fast on a memory map). `rows[i]` is the base row of view row i; with `parts` > 1 every
  base row is cut along its last axis into `parts` consecutive pieces (segments), view row
  i·parts + k being piece k of base row rows[i]. Stands in for a column (`shape`, `dtype`,
  `len`, `ndim`, `np.asarray`, which does read everything).
  """

  def __init__(self, base, rows: Optional[np.ndarray] = None, parts: int = 1):
    self.base = base
    self.parts = int(parts)
    if rows is None:
      rows = np.arange(len(base) * self.parts)
    self.rows = np.asarray(rows, np.int64)          # view row → (base row · parts + piece)
    if self.parts > 1 and base.shape[-1] % self.parts:
      raise ValueError(f"RowView: last axis {base.shape[-1]} is not divisible by {parts} parts")

  @property
  def shape(self):
    last = self.base.shape[-1] // self.parts
    return (len(self.rows),) + tuple(self.base.shape[1:-1]) + (last,)

  @property
  def dtype(self):
    return self.base.dtype

  @property
  def ndim(self):
    return self.base.ndim

  def __len__(self) -> int:
    return len(self.rows)

  def take(self, rows) -> "RowView":
    """A view of view rows `rows` (nothing is read)."""
    return RowView(self.base, self.rows[np.asarray(rows)], self.parts)

  def __getitem__(self, key):
    first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
    picked = np.atleast_1d(self.rows[first])
    base_rows, pieces = np.divmod(picked, self.parts)
    order = np.argsort(picked, kind="stable")      # read the base in file order
    data = np.empty((len(picked),) + self.shape[1:], self.base.dtype)
    if self.parts > 1:
      base = self.base
      if getattr(base, "lazy", False):   # a lazy column (records): read each clip once
        needed, base_rows = np.unique(base_rows, return_inverse=True)
        base = base[needed]
      # (N, …, parts, length): a reshape of the memory map reads nothing; indexing it reads only
      # the pieces asked for.
      pieced = base.reshape(base.shape[:-1] + (self.parts, self.shape[-1]))
      middle = (slice(None),) * (base.ndim - 2)
      data[order] = pieced[(base_rows[order],) + middle + (pieces[order],)]
    else:
      data[order] = self.base[base_rows[order]]
    if np.ndim(self.rows[first]) == 0:
      data = data[0]
      return data[rest] if rest else data
    return data[(slice(None),) + rest] if rest else data

  def __array__(self, dtype=None, copy=None):
    out = self[np.arange(len(self))]
    return out if dtype is None else out.astype(dtype)


def take_rows(column, rows: np.ndarray):
  """column[rows] without reading it when it is a memory map, a `RowView` or a lazy column
  (one whose `lazy` is True: `tfds_source.RecordColumn`)."""
  rows = np.asarray(rows)
  if isinstance(column, RowView):
    return column.take(rows)
  if (isinstance(column, np.memmap) or isinstance(getattr(column, "base", None), np.memmap)
      or getattr(column, "lazy", False)):   # memory maps and lazy columns stay unread
    return RowView(column, rows)
  return column[rows]


def is_host_column(column) -> bool:
  """True for columns that stay on the host (strings, objects)."""
  return np.dtype(column.dtype).kind in "USO"


@dataclasses.dataclass
class Split:
  """All examples of one split: named columns (see `COLUMNS`) sharing their first axis.

  columns: {name: (N, …) array, memory map or `RowView`}; `waveform`, `filename`, `index`
    required.
  classes: class names (`label` / `labels` index them); devices: recording-device names
    (`recording_device` indexes them).
  sample_rate: Hz of every audio column; waveform_scale: factor of int16 PCM audio columns.
  skipped: (filename, problem) of bad files left out; dataset: the dataset's name.
  per_epoch: for a training split whose examples are drawn anew every epoch (report 004's
    mixtures, rendered on the fly): epoch → the split of that epoch (same length and columns;
    epoch 0 is this split). The training pipeline reads epoch e's batches from `per_epoch(e)`;
    every other reader sees this split. `take` drops it (a subset has no later epochs).
  """
  name: str
  columns: Dict[str, Any]
  classes: Sequence[str]
  devices: Sequence[str]
  sample_rate: int
  waveform_scale: float = 1.0
  skipped: Sequence[tuple] = ()
  dataset: str = ""
  per_epoch: Optional[Any] = dataclasses.field(default=None, repr=False, compare=False)
  # Input pipelines built for this split (data/pipeline.py reuses them across evaluations);
  # not an init field, so `dataclasses.replace` gives a new split an empty one.
  pipelines: dict = dataclasses.field(default_factory=dict, init=False, repr=False,
                                      compare=False)

  def __post_init__(self):
    self.columns = dict(self.columns)
    missing = [c for c in REQUIRED if c not in self.columns]
    if missing:
      raise ValueError(f"split {self.name!r}: required column(s) {missing} missing; columns: "
                       f"{sorted(self.columns)}")
    n = len(self.columns["filename"])
    for name, column in self.columns.items():
      if len(column) != n:
        raise ValueError(f"split {self.name!r}: column {name!r} has {len(column)} rows, "
                         f"filename has {n}")
    if len(self.columns["waveform"].shape) != 3:
      raise ValueError(f"split {self.name!r}: waveform must be (N, channels, samples), got shape "
                       f"{tuple(self.columns['waveform'].shape)}")
    if "sources" in self.columns and len(self.columns["sources"].shape) != 3:
      raise ValueError(f"split {self.name!r}: sources must be (N, tracks, samples), got shape "
                       f"{tuple(self.columns['sources'].shape)}")
    if len(set(np.asarray(self.columns["filename"]).tolist())) != n:
      raise ValueError(f"split {self.name!r}: duplicate filenames")

  def __len__(self) -> int:
    return len(self.columns["filename"])

  def __contains__(self, name: str) -> bool:
    return name in self.columns

  def __getitem__(self, name: str):
    if name not in self.columns:
      raise KeyError(f"split {self.name!r} of {self.dataset or 'dataset'} has no column {name!r}; "
                     f"columns: {sorted(self.columns)}")
    return self.columns[name]

  def get(self, name: str, default=None):
    return self.columns.get(name, default)

  @property
  def filename(self) -> np.ndarray:
    return self.columns["filename"]

  @property
  def index(self) -> np.ndarray:
    return self.columns["index"]

  @property
  def num_samples(self) -> int:
    """Samples per clip (the waveform's last axis)."""
    return int(self.columns["waveform"].shape[-1])

  @property
  def num_channels(self) -> int:
    return int(self.columns["waveform"].shape[1])

  @property
  def batch_columns(self) -> tuple:
    """The columns batches carry: every numeric one (strings stay on the host)."""
    return tuple(n for n, c in self.columns.items() if not is_host_column(c))

  def audio(self, name: str = "waveform", rows=None) -> np.ndarray:
    """Audio column `name` at `rows` (all when None) as float32, int16 PCM scaled."""
    column = self[name]
    rows = slice(None) if rows is None else rows
    data = np.asarray(column[rows]).astype(np.float32)
    return data if self.waveform_scale == 1.0 else data * np.float32(self.waveform_scale)

  def column_rows(self, name: str, rows) -> np.ndarray:
    """Column `name` at `rows` as the batch holds it (audio as float32)."""
    if name in AUDIO_COLUMNS:
      return self.audio(name, rows)
    return np.asarray(self[name][rows])

  def take(self, rows, name: Optional[str] = None) -> "Split":
    """The examples at `rows`, in that order (memory-mapped columns stay unread)."""
    rows = np.asarray(rows)
    return dataclasses.replace(
        self, name=self.name if name is None else name, per_epoch=None,
        columns={k: take_rows(v, rows) for k, v in self.columns.items()})

  def with_columns(self, columns: Mapping[str, Any]) -> "Split":
    """This split with `columns` added (or replaced); each must have one row per example."""
    if self.per_epoch is not None:
      raise ValueError(f"split {self.name!r} of {self.dataset or 'the dataset'} is drawn anew "
                       f"every epoch: columns {sorted(columns)} cannot be joined to it (later "
                       f"epochs would lack them)")
    return dataclasses.replace(self, columns=dict(self.columns, **columns))

  def select(self, **equal) -> np.ndarray:
    """Row indices where every named column equals the given value, e.g.
    `split.select(recording_device=2)`."""
    keep = np.ones(len(self), bool)
    for name, value in equal.items():
      keep &= np.asarray(self[name]) == value
    return np.flatnonzero(keep)
