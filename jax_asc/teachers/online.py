"""Online teachers: another run's model, frozen, run inside the student's jitted step.

An online teacher keeps what it was trained with: its own model, its frontend (mel settings)
and its sample rate. The student's augmented waveform is resampled to the teacher's rate inside
the graph (windowed sinc, `audio.resample`) when the rates differ, then goes through the
teacher's frontend. Its weights may be cast to bfloat16 / float16 (`dtype`) and held replicated
or split over the mesh (`sharding`, see `train.mesh.parameter_shardings`). Only the student is
differentiated and saved: the teacher is never part of the train state or a checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jax_asc import models
from jax_asc.audio import frontends
from jax_asc.audio import resample as resample_lib
from jax_asc.train import checkpoint as checkpoint_lib
from jax_asc.train import mesh as mesh_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was made with (`<workdir>/config.json`)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: {workdir} is not a jax_asc run (train the "
                            "teacher there first)")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_run(workdir: str, which: str, key: str = "checkpoint"):
  """(the run's config, {"params", "batch_stats"[, "ema_params"]}) of checkpoint `which`
  (latest, best, soup) of another run; `key` names the config key in the error."""
  config = load_run_config(workdir)
  ckpt = config.checkpoint
  checkpoints = checkpoint_lib.Checkpoints(workdir, best_metric=ckpt.best_metric,
                                           best_mode=ckpt.best_mode, keep_best=ckpt.keep_best)
  try:
    restored = checkpoints.restore_variables(which)
  finally:
    checkpoints.close()
  if restored is None:
    raise FileNotFoundError(f"run {workdir} has no {which!r} checkpoint ({key}); train it first")
  return config, restored[0]


@dataclasses.dataclass(frozen=True)
class OnlineTeacher:
  """A frozen run ready for the step.

  name: the teacher's name (`config.teachers.<name>`); workdir: its run.
  model: its Flax module (built in `dtype`); variables: {"params", "batch_stats"} in `dtype`.
  frontend: its mel settings (their `sample_rate` is the rate it hears).
  sharding: "replicated" or "split" (over the mesh's data axis).
  """
  name: str
  workdir: str
  run_config: Any
  model: nn.Module
  variables: Dict[str, Any]
  frontend: frontends.MelSettings
  dtype: Any
  sharding: str

  @property
  def sample_rate(self) -> int:
    return int(self.frontend.sample_rate)

  def inputs(self, waveform: jax.Array, sample_rate: int) -> jax.Array:
    """The teacher's model input (B, n_mels, frames) in its dtype from waveforms (B, samples)
    at `sample_rate` Hz (resampled to the teacher's rate in the graph when they differ)."""
    if int(sample_rate) != self.sample_rate:
      waveform = resample_lib.resample(waveform, int(sample_rate), self.sample_rate)
    return frontends.log_mel(waveform, self.frontend).astype(self.dtype)

  def num_frames(self, num_samples: int, sample_rate: int) -> int:
    """Frames of the teacher's input for clips of `num_samples` at `sample_rate`."""
    samples = resample_lib.output_length(num_samples, sample_rate, self.sample_rate)
    return self.frontend.num_frames(samples)

  def apply(self, variables, inputs, mesh=None, **kwargs):
    """The teacher's output in eval mode (no dropout, running statistics).

    With `sharding` "split" and the `mesh` the variables were placed on, the weights are
    gathered (replicated) first, inside the step: they rest split over the devices between
    steps, and every layer computes with whole weights. (Letting XLA partition the layers
    themselves over split weights gave wrong grouped convolutions on CPU next to the native
    kernels; gathering keeps the results the replicated teacher's, tested.)
    """
    if self.sharding == "split":
      if mesh is None:
        raise ValueError(f"teacher {self.name!r} is split over a mesh: apply it with that mesh")
      variables = jax.lax.with_sharding_constraint(variables, mesh_lib.replicated(mesh))
    return self.model.apply(variables, inputs, train=False, **kwargs)

  def shardings(self, mesh):
    """Shardings of `variables` on `mesh` (`sharding`: replicated or split)."""
    return mesh_lib.parameter_shardings(self.variables, mesh, self.sharding)


def load(name: str, spec, n_classes: int) -> OnlineTeacher:
  """Teacher `name` from its config section (`config.teachers.<name>`, source "online"):
  run, checkpoint, dtype, sharding."""
  if not spec.run:
    raise ValueError(f"teachers.{name}.run is empty: name the teacher run's workdir")
  if spec.dtype not in DTYPES:
    raise ValueError(f"teachers.{name}.dtype must be one of {sorted(DTYPES)}, got "
                     f"{spec.dtype!r}")
  if spec.sharding not in mesh_lib.PARAMETER_SHARDINGS:
    raise ValueError(f"teachers.{name}.sharding must be one of {mesh_lib.PARAMETER_SHARDINGS}, "
                     f"got {spec.sharding!r}")
  run_config, variables = load_run(spec.run, spec.checkpoint, f"teachers.{name}.checkpoint")
  dtype = DTYPES[spec.dtype]
  model = models.build(run_config.model, n_classes=n_classes, dtype=dtype)
  cast = lambda tree: jax.tree.map(lambda v: jnp.asarray(v, dtype), tree)
  variables = {"params": cast(variables["params"]),
               "batch_stats": cast(variables.get("batch_stats") or {})}
  frontend = frontends.settings_from_config(run_config.frontend)
  return OnlineTeacher(name, os.path.abspath(spec.run), run_config, model, variables, frontend,
                       dtype, spec.sharding)


def shapes(teacher: OnlineTeacher, num_samples: int, sample_rate: int,
           **kwargs) -> Dict[str, Any]:
  """The teacher's outputs' shapes for one clip (`jax.eval_shape`, nothing computed)."""
  x = jax.ShapeDtypeStruct((1, teacher.frontend.n_mels,
                            teacher.num_frames(num_samples, sample_rate)), teacher.dtype)
  return jax.eval_shape(lambda v, x: teacher.model.apply(v, x, train=False, **kwargs),
                        teacher.variables, x)

