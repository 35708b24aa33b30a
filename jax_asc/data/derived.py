"""Splits derived from loaded ones: fixed-length segments of long clips, and a validation split
held out from the training split by recording location.

Both keep every example's metadata (label, device, identifier) and give stable integer ids:
  segment(split, seconds)   clip i of n_seg segments → examples `<file>@<k>`, k = 0 … n_seg − 1,
                            index = index_i · n_seg + k; the waveform is a reshape view of the
                            (memory-mapped) cache where its layout allows.
  holdout(split, fraction, seed)  → (reduced split, held-out split): whole recording locations
                            (`Split.identifier`) move, so no location is on both sides; the
                            held-out examples keep their `index`.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Tuple

import numpy as np

from jax_asc.data.dataset import Split

HOLDOUT = "holdout"   # the split name `data.validation_split = "holdout"` loads


class RowSubset:
  """Rows `rows` of a 2-D array (a memory-mapped cache), read only when indexed.

  Stands in for `Split.waveform` (N, samples) where copying the selected rows would pull a cache
  larger than memory into RAM: `x[rows]`, `x[rows, cols]`, `len`, `shape`, `dtype` and
  `np.asarray(x)` (which does read every row) behave as on the gathered array.
  """

  def __init__(self, base, rows: np.ndarray):
    self.base = base
    self.rows = np.asarray(rows, np.int64)

  @property
  def shape(self):
    return (len(self.rows),) + tuple(self.base.shape[1:])

  @property
  def dtype(self):
    return self.base.dtype

  @property
  def ndim(self):
    return self.base.ndim

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, key):
    first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
    rows = self.rows[first]
    picked = self.base[rows]
    if not rest:
      return picked
    return picked[(slice(None),) + rest] if np.ndim(rows) else picked[rest]

  def __array__(self, dtype=None, copy=None):
    out = self.base[self.rows]
    return out if dtype is None else out.astype(dtype)

  def reshape(self, *shape):
    return np.asarray(self).reshape(*shape)


def _take_rows(waveform, rows: np.ndarray):
  """waveform[rows]: without reading it when `waveform` is memory-mapped (a `RowSubset`)."""
  if isinstance(waveform, RowSubset):
    return RowSubset(waveform.base, waveform.rows[rows])
  if isinstance(waveform, np.memmap) or isinstance(getattr(waveform, "base", None), np.memmap):
    return RowSubset(waveform, rows)
  return waveform[rows]


def segment(split: Split, seconds: float, key: str = "data.segment_seconds") -> Split:
  """`split` with every clip cut into consecutive segments of `seconds` (s).

  waveform (N, S) → (N · n_seg, S / n_seg) with n_seg = S / (seconds · sample_rate). A clip must
  hold a whole number of segments: a remainder is an error (never dropped silently), as is a
  clip shorter than one segment or a segment that is not a whole number of samples. Segment k
  of clip i: filename `<filename_i>@<k>`, index `index_i · n_seg + k`, the clip's label, device
  and identifier.
  """
  rate = split.sample_rate
  samples = float(seconds) * rate
  seg = int(round(samples))
  if seconds <= 0 or abs(samples - seg) > 1e-6 * max(samples, 1.0):
    raise ValueError(f"{key}={seconds}: a segment must be a positive whole number of samples at "
                     f"{rate} Hz (got {samples} samples)")
  clip = split.num_samples
  what = f"{split.dataset or 'dataset'}/{split.name}"
  if clip < seg:
    raise ValueError(f"{key}={seconds}: the clips of {what} are {clip} samples "
                     f"({clip / rate:g} s at {rate} Hz), shorter than one segment of {seg}")
  if clip % seg:
    raise ValueError(f"{key}={seconds}: the clips of {what} are {clip} samples "
                     f"({clip / rate:g} s at {rate} Hz), not a whole multiple of the segment "
                     f"({seg} samples): expected a segment length that divides the clip length "
                     f"(the remainder of {clip % seg} samples would be lost)")
  n_seg = clip // seg
  if n_seg == 1:
    return split
  n = len(split)
  # A C-contiguous (memory-mapped) cache reshapes without a copy; other layouts are copied.
  waveform = split.waveform.reshape(n * n_seg, seg)
  index = split.index.astype(np.int64)[:, None] * n_seg + np.arange(n_seg)[None, :]
  if index.size and index.max() > np.iinfo(np.int32).max:
    raise ValueError(f"{key}={seconds}: segment ids of {what} overflow int32 "
                     f"(max index {int(split.index.max())} × {n_seg} segments)")
  filename = np.array([f"{f}@{k}" for f in split.filename.tolist() for k in range(n_seg)])
  repeat = lambda a: None if a is None else np.repeat(np.asarray(a), n_seg, axis=0)
  return dataclasses.replace(
      split, waveform=waveform, label=repeat(split.label), device=repeat(split.device),
      filename=filename, index=index.reshape(-1).astype(np.int32),
      identifier=repeat(split.identifier))


def _group_rank(seed: int, identifier: str) -> str:
  """A key that orders groups pseudo-randomly, the same in every process and on every machine."""
  return hashlib.sha256(f"{int(seed)}:{identifier}".encode("utf-8")).hexdigest()


def holdout_mask(identifier: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """(N,) bool: the examples held out, whole groups of equal `identifier` (str) at a time.

  The groups are ordered by sha256(seed, identifier) and taken in that order; of the prefixes
  of this order, the one whose example count is nearest `fraction · N` is held out (at least
  one group, and at least one group stays). The held-out count is thus within one group's size
  (half the largest group, whenever the first group alone is not too large) of `fraction · N`.
  """
  identifier = np.asarray(identifier).astype(str)
  groups, inverse, sizes = np.unique(identifier, return_inverse=True, return_counts=True)
  if len(groups) < 2:
    raise ValueError(f"a holdout needs at least two recording locations, got {len(groups)}")
  order = sorted(range(len(groups)), key=lambda g: _group_rank(seed, groups[g]))
  cumulative = np.cumsum(sizes[order])
  target = fraction * len(identifier)
  take = 1 + int(np.argmin(np.abs(cumulative[:-1] - target)))   # groups held out
  held = np.zeros(len(groups), bool)
  held[order[:take]] = True
  return held[inverse.reshape(-1)]


def holdout(split: Split, fraction: float, seed: int) -> Tuple[Split, Split]:
  """(`split` without the held-out examples, the held-out split named "holdout").

  Grouped by `split.identifier` (TAU: the recording location, e.g. `barcelona-203`): every
  example of a location is on the same side. Both keep their rows' original `index` values and
  order; the reduced split keeps `split.name`. See `holdout_mask` for the choice of groups.
  """
  what = f"{split.dataset or 'dataset'}/{split.name}"
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"data.holdout_fraction must be in (0, 1), got {fraction}")
  identifier = split.identifier
  if identifier is None or not any(str(i) for i in np.asarray(identifier).tolist()):
    raise ValueError(
        f"data.validation_split='holdout' on {what}: the dataset {split.dataset or '?'} gives "
        f"no recording-location identifiers (Split.identifier is empty), and the holdout "
        f"groups examples by them so that no location is on both sides; name a validation "
        f"split of the dataset instead")
  identifier = np.asarray(identifier).astype(str)
  empty = np.flatnonzero(identifier == "")
  if empty.size:
    raise ValueError(f"data.validation_split='holdout' on {what}: {empty.size} example(s) "
                     f"without an identifier, e.g. {split.filename[empty[0]]!r}")
  mask = holdout_mask(identifier, fraction, seed)

  def rows(keep: np.ndarray, name: str) -> Split:
    ids = np.flatnonzero(keep)
    return dataclasses.replace(
        split, name=name, waveform=_take_rows(split.waveform, ids), label=split.label[ids],
        device=split.device[ids], filename=split.filename[ids], index=split.index[ids],
        identifier=identifier[ids])

  return rows(~mask, split.name), rows(mask, HOLDOUT)
