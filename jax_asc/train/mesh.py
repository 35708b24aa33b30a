"""Device mesh and shardings for data parallelism over all devices of all hosts.

Global-view code under `jax.jit`: parameters and optimizer state are replicated (`P()`), batches are
split along their first axis over the `data` axis (`P('data')`). Reductions over the batch axis
inside jit (means in losses, BatchNorm statistics) are over the global batch.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed(cfg) -> None:
  """`jax.distributed.initialize` when `cfg.enabled`; arguments left empty are auto-detected."""
  if not cfg.enabled:
    return
  kwargs = {}
  if cfg.coordinator_address:
    kwargs.update(coordinator_address=cfg.coordinator_address,
                  num_processes=cfg.num_processes, process_id=cfg.process_id)
  jax.distributed.initialize(**kwargs)


def make_mesh(devices=None) -> Mesh:
  """A 1-D `data` mesh over `devices` (default: every device of every host)."""
  devices = jax.devices() if devices is None else list(devices)
  # Auto axes: ops like a batch roll (mixup) stay legal on sharded arrays (STYLE.md pitfall).
  return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh, axis: int = 0) -> NamedSharding:
  """Split along `axis` (the batch axis) over the `data` mesh axis."""
  return NamedSharding(mesh, P(*([None] * axis), DATA_AXIS))


def global_array(local: np.ndarray, mesh: Mesh, axis: int = 0) -> jax.Array:
  """This host's slice (NumPy, split along `axis`) → one globally sharded jax.Array."""
  return jax.make_array_from_process_local_data(batch_sharded(mesh, axis), np.asarray(local))


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """This host's slice of a batch (NumPy) → globally sharded jax.Arrays."""
  return {k: global_array(v, mesh) for k, v in local_batch.items()}


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
  if global_batch_size % mesh.size:
    raise ValueError(f"batch_size {global_batch_size} must be divisible by the "
                     f"{mesh.size} devices of the mesh")
