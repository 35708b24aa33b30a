"""Splits derived from loaded ones: fixed-length segments of long clips, and a validation split
held out from the training split by recording location.

Both keep every column of every example and give stable integer ids:
  segment(split, seconds)   clip i of n_seg segments → examples `<file>@<k>`, k = 0 … n_seg − 1,
                            index = index_i · n_seg + k; audio columns (waveform, sources) are
                            cut along their sample axis as lazy views of the (memory-mapped)
                            cache, every other column repeated.
  holdout(split, fraction, seed)  → (reduced split, held-out split): whole recording locations
                            (the `identifier` column) move, so no location is on both sides; the
                            held-out examples keep their `index`.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Tuple

import numpy as np

from jax_asc.data.dataset import AUDIO_COLUMNS, RowView, Split

HOLDOUT = "holdout"   # the split name `data.validation_split = "holdout"` loads


def segment(split: Split, seconds: float, key: str = "data.segment_seconds") -> Split:
  """`split` with every clip cut into consecutive segments of `seconds` (s).

  Audio columns (N, …, S) → (N · n_seg, …, S / n_seg) with n_seg = S / (seconds · sample_rate),
  read lazily (`RowView`); other columns are repeated per segment. A clip must hold a whole
  number of segments: a remainder is an error (never dropped silently), as is a clip shorter than
  one segment or a segment that is not a whole number of samples. Segment k of clip i: filename
  `<filename_i>@<k>`, index `index_i · n_seg + k`, every other column of the clip.
  """
  if split.per_epoch is not None:
    raise ValueError(f"{key}={seconds}: split {split.name!r} of {split.dataset} is drawn anew "
                     f"every epoch and cannot be cut into segments")
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
  index = split.index.astype(np.int64)[:, None] * n_seg + np.arange(n_seg)[None, :]
  if index.size and index.max() > np.iinfo(np.int32).max:
    raise ValueError(f"{key}={seconds}: segment ids of {what} overflow int32 "
                     f"(max index {int(split.index.max())} × {n_seg} segments)")
  columns = {}
  for name, column in split.columns.items():
    if name in AUDIO_COLUMNS:
      if column.shape[-1] != clip:
        raise ValueError(f"{what}: audio column {name!r} has {column.shape[-1]} samples per "
                         f"example, the waveform {clip}")
      if isinstance(column, RowView):   # a view of pieces: each piece cut into n_seg pieces
        rows = (column.rows[:, None] * n_seg + np.arange(n_seg)[None, :]).reshape(-1)
        columns[name] = RowView(column.base, rows, column.parts * n_seg)
      else:
        columns[name] = RowView(column, parts=n_seg)
    else:
      columns[name] = np.repeat(np.asarray(column), n_seg, axis=0)
  columns["filename"] = np.array([f"{f}@{k}" for f in split.filename.tolist()
                                  for k in range(n_seg)])
  columns["index"] = index.reshape(-1).astype(np.int32)
  return dataclasses.replace(split, columns=columns)


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

  Grouped by the `identifier` column (TAU: the recording location, e.g. `barcelona-203`): every
  example of a location is on the same side. Both keep every column, their rows' original
  `index` values and order; the reduced split keeps `split.name`. See `holdout_mask` for the
  choice of groups.
  """
  what = f"{split.dataset or 'dataset'}/{split.name}"
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"data.holdout_fraction must be in (0, 1), got {fraction}")
  identifier = split.get("identifier")
  if identifier is None or not any(str(i) for i in np.asarray(identifier).tolist()):
    raise ValueError(
        f"data.validation_split='holdout' on {what}: the dataset {split.dataset or '?'} gives "
        f"no recording-location identifiers (the split's identifier column is empty), and the "
        f"holdout groups examples by them so that no location is on both sides; name a "
        f"validation split of the dataset instead")
  identifier = np.asarray(identifier).astype(str)
  empty = np.flatnonzero(identifier == "")
  if empty.size:
    raise ValueError(f"data.validation_split='holdout' on {what}: {empty.size} example(s) "
                     f"without an identifier, e.g. {split.filename[empty[0]]!r}")
  mask = holdout_mask(identifier, fraction, seed)
  return split.take(np.flatnonzero(~mask)), split.take(np.flatnonzero(mask), name=HOLDOUT)
