"""The in-memory form every dataset reader produces: one `Split` of validated examples."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np


def default_cache_dir() -> str:
  """Where datasets are cached: `$JAX_ASC_DATA_DIR`, else `~/.cache/jax_asc`."""
  return os.environ.get("JAX_ASC_DATA_DIR",
                        os.path.join(os.path.expanduser("~"), ".cache", "jax_asc"))


@dataclasses.dataclass
class Split:
  """All examples of one split, keyed by `filename`; arrays share their first axis.

  waveform: (N, samples) int16 PCM (scaled by `waveform_scale`) or float32, mono.
  label: (N,) int32 class index, -1 for unlabelled examples.
  device: (N,) int32 index into `devices`.
  filename: (N,) str, unique.
  index: (N,) int32, stable integer id (the row in the split's metadata; per-example memories
    of later losses); a skipped bad file leaves its index unused.
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
  identifier: Optional[np.ndarray] = None   # recording location / source id (str), where known
  skipped: Sequence[tuple] = ()             # (filename, problem) of bad files left out
  dataset: str = ""
  # Input pipelines built for this split (data/pipeline.py reuses them across evaluations);
  # not an init field, so `dataclasses.replace` gives a new split an empty one.
  pipelines: dict = dataclasses.field(default_factory=dict, init=False, repr=False,
                                      compare=False)

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
    waves = self.waveform[rows].astype(np.float32)
    return waves if self.waveform_scale == 1.0 else waves * np.float32(self.waveform_scale)

  @property
  def num_samples(self) -> int:
    return self.waveform.shape[1]
