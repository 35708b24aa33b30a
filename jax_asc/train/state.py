"""The train state: everything a step reads and writes, one pytree (checkpointed whole)."""
from __future__ import annotations

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  step: jax.Array            # int32 scalar: micro-batch steps taken
  params: Any
  batch_stats: Any           # BatchNorm running statistics ({} when the model has none)
  opt_state: Any
  ema_params: Optional[Any]  # exponential moving average of params, None when disabled
  rng: jax.Array             # raw uint32[2] key; a step uses fold_in(rng, step)
  loss_state: Any = None     # non-differentiable state a loss threads through steps (CRD memory)


def create(variables, tx, rng, ema: bool, loss_state: Any = None) -> TrainState:
  params = variables["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
      ema_params=jax.tree.map(jnp.copy, params) if ema else None, rng=rng,
      loss_state=loss_state)


def memory_bytes(state: TrainState) -> int:
  """Bytes of the train state's arrays (parameters, batch statistics, optimizer state, EMA,
  loss state) on the devices, counted once per global array (not per replica)."""
  return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state)
             if hasattr(leaf, "dtype") and not jax.dtypes.issubdtype(leaf.dtype,
                                                                    jax.dtypes.prng_key))
