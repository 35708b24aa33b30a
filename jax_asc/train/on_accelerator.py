"""Training from a split held in accelerator memory: batches gathered by row inside the program.

The host sends only row indices, (K, global_batch) per call; `train_steps` gathers each step's
batch from the replicated arrays and runs K steps in one `lax.scan`, so an accelerator never waits
on the host. The step order is the host pipeline's (`AcceleratorData.rows`), so both paths train alike.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Batch = Dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class AcceleratorData:
  """The training split held in device memory: each step gathers its batch by row index inside
  the jitted program, and `steps_per_call` steps run per call (a scan), so an accelerator never
  waits on the host.

  arrays: `waveform` (N, samples) in its storage dtype (float16, float32 or int16 PCM) and the
    per-example columns `label`, `device`, `index` (N,), all NumPy; replicated on every device.
  waveform_scale: float32 factor applied after the cast to float32 (int16 PCM), as
    `Split.float_waveforms` does, so both paths see the same samples.
  rows: global step → (global_batch,) row indices: the same order as the host pipeline.
  """
  arrays: Dict[str, np.ndarray]
  rows: Callable[[int], np.ndarray]
  steps_per_call: int = 8
  waveform_scale: float = 1.0


def gather(arrays: Dict[str, jax.Array], rows: jax.Array, waveform_scale: float = 1.0) -> Batch:
  """One step's batch from the arrays on the device.

  Args:
    arrays: `waveform` (N, samples) in its storage dtype and per-example columns (N, …).
    rows: (B,) int32 row indices of this step's batch.
    waveform_scale: factor after the cast to float32 (int16 PCM → [-1, 1)); 1 skips it.

  Returns:
    The batch: `waveform` (B, samples) float32, each other column (B, …), `mask` (B,) all True.
  """
  waveform = arrays["waveform"][rows].astype(jnp.float32)
  if waveform_scale != 1.0:
    waveform = waveform * jnp.float32(waveform_scale)
  batch = {k: v[rows] for k, v in arrays.items() if k != "waveform"}
  return dict(batch, waveform=waveform, mask=jnp.ones(rows.shape, bool))


def train_steps(step_fn: Callable[[Any, Batch, Any], Tuple[Any, Dict[str, jax.Array]]], state,
                arrays: Dict[str, jax.Array], rows: jax.Array, active: jax.Array, frozen,
                waveform_scale: float = 1.0):
  """The first `active` of K steps of `step_fn` on gathered batches, in one scan (to be jitted).

  Args:
    step_fn: (state, batch, frozen) → (new state, {metric: scalar}), e.g. `step.train_step`
      with its task and optimizer bound.
    state: the train state.
    arrays: the split on the device (see `gather`).
    rows: (K, B) int32 row indices, one row of indices per step.
    active: int32 scalar ≤ K: steps past it are skipped (state unchanged, metrics 0), so one
      compiled program of length K serves shorter calls.
    frozen: the teachers' variables, handed to `step_fn`.
    waveform_scale: see `gather` (static).

  Returns:
    (state after `active` steps, {metric: (K,) per step, 0 where skipped}).
  """
  def body(state, inputs):
    index, step_rows = inputs

    def run(state):
      return step_fn(state, gather(arrays, step_rows, waveform_scale), frozen)

    def skip(state):
      shapes = jax.eval_shape(run, state)[1]
      return state, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return jax.lax.cond(index < active, run, skip, state)
  return jax.lax.scan(body, state, (jnp.arange(rows.shape[0]), rows))
