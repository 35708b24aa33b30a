"""A training split held in accelerator memory, each step's batch gathered by row in the program.

`from_split` puts the split's numeric columns in the arrays the loop places on every device
(audio in `data.accelerator_dtype`, int16 PCM kept as int16: as small, and exact); the host then
sends only row indices, (K, global_batch) per call, and `AcceleratorData.gather` builds each
step's batch inside the jitted scan (`jax_asc.train.on_accelerator`). The step order is the
host pipeline's (`pipeline.global_step_rows`), and audio is cast and scaled exactly as
`Split.audio` does, so both paths train alike.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_asc.data import pipeline
from jax_asc.data.dataset import AUDIO_COLUMNS, Split

ACCELERATOR_DTYPES = ("float16", "float32")


@dataclasses.dataclass(frozen=True)
class AcceleratorData:
  """The training split for the accelerator path (the loop's `TrainData.accelerator`).

  arrays: {column: (N, …) NumPy array in its storage dtype}, replicated on every device.
  rows: global step → (global_batch,) row indices: the same order as the host pipeline.
  steps_per_call: steps per jitted call (one `lax.scan`).
  scales: {audio column: factor}: cast to float32 and multiplied on gather (int16 PCM).
  """
  arrays: Dict[str, np.ndarray]
  rows: Callable[[int], np.ndarray]
  steps_per_call: int = 8
  scales: Mapping[str, float] = dataclasses.field(default_factory=dict)

  def gather(self, arrays: Dict[str, jax.Array], rows: jax.Array) -> Dict[str, jax.Array]:
    """One step's batch from the arrays on the device (inside jit).

    Args:
      arrays: `self.arrays` as placed on the devices.
      rows: (B,) int32 row indices of this step's batch.

    Returns:
      {column: (B, …)}: audio columns as float32 (times their scale), the others as stored;
      `mask` (B,) all True.
    """
    batch = {}
    for name, column in arrays.items():
      picked = column[rows]
      if name in self.scales:
        picked = picked.astype(jnp.float32)
        if self.scales[name] != 1.0:
          picked = picked * jnp.float32(self.scales[name])
      batch[name] = picked
    batch["mask"] = jnp.ones(rows.shape, bool)
    return batch


def from_split(split: Split, *, global_batch: int, seed: int, accelerator_dtype: str = "float16",
               steps_per_call: int = 8,
               columns: Optional[Sequence[str]] = None) -> AcceleratorData:
  """`split` for the accelerator path: its batch columns (`pipeline.batch_columns`), audio in
  `accelerator_dtype` unless stored as int16 PCM, in the host pipeline's step order."""
  if accelerator_dtype not in ACCELERATOR_DTYPES:
    raise ValueError(f"data.accelerator_dtype must be one of {ACCELERATOR_DTYPES}, got "
                     f"{accelerator_dtype!r}")
  arrays, scales = {}, {}
  for name in pipeline.batch_columns(split, columns):
    column = split[name]
    if name not in AUDIO_COLUMNS:
      arrays[name] = np.asarray(column)
      continue
    scale = float(split.waveform_scale)
    if column.dtype != np.int16 and (column.dtype != np.dtype(accelerator_dtype) or scale != 1):
      converted = np.empty(column.shape, accelerator_dtype)
      for start in range(0, len(split), 1024):   # in chunks: the column may be a memory map
        rows = np.arange(start, min(start + 1024, len(split)))
        converted[rows] = split.audio(name, rows)
      column, scale = converted, 1.0
    arrays[name], scales[name] = np.asarray(column), scale
  rows = lambda step: pipeline.global_step_rows(len(split), global_batch, seed, step)
  return AcceleratorData(arrays, rows, steps_per_call=steps_per_call, scales=scales)
