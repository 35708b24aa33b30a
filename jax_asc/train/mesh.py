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


# Frozen (teacher) parameters: "replicated" on every device, or "split" over the data axis.
PARAMETER_SHARDINGS = ("replicated", "split")


def parameter_shardings(tree, mesh: Mesh, mode: str, min_size: int = 2 ** 14):
  """A tree of `NamedSharding`s like `tree` (arrays or shape structs) for frozen parameters.

  "replicated": every leaf on every device (`P()`). "split": each leaf of at least `min_size`
  numbers is split over the `data` axis along its largest dimension divisible by the number of
  devices (FSDP-style: each device holds 1/n of the weights and XLA gathers them where a layer
  needs them); smaller or indivisible leaves stay replicated.
  """
  if mode not in PARAMETER_SHARDINGS:
    raise ValueError(f"parameter sharding must be one of {PARAMETER_SHARDINGS}, got {mode!r}")
  n = mesh.shape[DATA_AXIS]

  def one(leaf):
    shape = tuple(leaf.shape)
    if mode == "replicated" or n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
      return replicated(mesh)
    axes = [a for a in range(len(shape)) if shape[a] % n == 0]
    if not axes:
      return replicated(mesh)
    axis = max(axes, key=lambda a: (shape[a], -a))
    return NamedSharding(mesh, P(*([None] * axis), DATA_AXIS))
  return jax.tree.map(one, tree)
