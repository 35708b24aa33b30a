"""The in-memory form every dataset reader produces: one `Split` of validated examples."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

@dataclasses.dataclass
class Split:
  """All examples of one split, keyed by `filename`; arrays share their first axis.

  waveform: (N, samples) int16 PCM (scaled by `waveform_scale`) or float32, mono.
  label: (N,) int32 class index, -1 for unlabelled examples.
  device: (N,) int32 index into `devices`.
  filename: (N,) str, unique.
  index: (N,) int32, stable integer id (per-example memories of later losses).
  """
  name: str
  waveform: np.ndarray
  label: np.ndarray
  device: np.ndarray
  filename: np.ndarray
  index: np.ndarray
  classes: Sequence[str]
  devices: Sequence[str]
  sample_rate: int
  waveform_scale: float = 1.0
  location: Optional[np.ndarray] = None

  def __post_init__(self):
    n = len(self.filename)
    for field in ("waveform", "label", "device", "index"):
      if len(getattr(self, field)) != n:
        raise ValueError(f"split {self.name!r}: {field} has {len(getattr(self, field))} rows, "
                         f"filename has {n}")
    if len(set(self.filename.tolist())) != n:
      raise ValueError(f"split {self.name!r}: duplicate filenames")

  def __len__(self) -> int:
    return len(self.filename)

  def float_waveforms(self, rows=None) -> np.ndarray:
    rows = slice(None) if rows is None else rows
    return self.waveform[rows].astype(np.float32) * np.float32(self.waveform_scale)
