"""Training from data held in accelerator memory: K steps per call in one `lax.scan`.

The host sends only row indices, (K, global_batch) per call; `train_steps` builds each step's
batch with the data's own `gather` (the arrays and the gather come from `jax_asc.data`; the
train room knows no column) and runs the steps in one scan, so an accelerator never waits on the
host.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp

Batch = Dict[str, jax.Array]


def train_steps(step_fn: Callable[[Any, Batch, Any], Tuple[Any, Dict[str, jax.Array]]],
                gather: Callable[[Dict[str, jax.Array], jax.Array], Batch], state,
                arrays: Dict[str, jax.Array], rows: jax.Array, active: jax.Array, frozen):
  """The first `active` of K steps of `step_fn` on gathered batches, in one scan (to be jitted).

  Args:
    step_fn: (state, batch, frozen) → (new state, {metric: scalar}), e.g. `step.train_step`
      with its task and optimizer bound.
    gather: (arrays, (B,) rows) → the batch of those rows (`AcceleratorData.gather`).
    state: the train state.
    arrays: the data on the device.
    rows: (K, B) int32 row indices, one row of indices per step.
    active: int32 scalar ≤ K: steps past it are skipped (state unchanged, metrics 0), so one
      compiled program of length K serves shorter calls.
    frozen: the teachers' variables, handed to `step_fn`.

  Returns:
    (state after `active` steps, {metric: (K,) per step, 0 where skipped}).
  """
  def body(state, inputs):
    index, step_rows = inputs

    def run(state):
      return step_fn(state, gather(arrays, step_rows), frozen)

    def skip(state):
      shapes = jax.eval_shape(run, state)[1]
      return state, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return jax.lax.cond(index < active, run, skip, state)
  return jax.lax.scan(body, state, (jnp.arange(rows.shape[0]), rows))
