"""The train step: one optimizer update of a task's model on a global batch (jitted by `loop`).

What happens in `train_step`, in order:
  1. keys: `fold_in(state.rng, state.step)` split into (inputs, model dropout, loss, patchout);
  2. `task.make_inputs(key, batch)`: the model input (frontend, augmentation) plus extras that
     join the batch (`Prepared`);
  3. the teacher, once: `task.teacher(frozen, batch)` → `batch["teacher"]` (stop_gradient);
     with `task.ema_teacher` the frozen dict also holds `"ema"`: the student's EMA variables
     before this step's update ({"params": state.ema_params, "batch_stats": state.batch_stats});
  4. gradients of `task.loss` with respect to the trainable parameters only (those not frozen by
     `optimizer.param_groups`; frozen ones are closed over, so they get no gradient);
  5. the optax update (frozen parameters are merged back unchanged, bit for bit);
  6. the EMA of the trainable parameters (`ema.update`), when the run keeps one; a frozen
     parameter's EMA is the parameter itself.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jax_asc.train import ema as ema_lib
from jax_asc.train import optim
from jax_asc.train.state import TrainState

Batch = Dict[str, jax.Array]
Metrics = Dict[str, jax.Array]

EMA_KEY = "ema"   # the key of the EMA variables in the teacher's frozen dict (Task.ema_teacher)


class Prepared(NamedTuple):
  """What `Task.make_inputs` may return instead of a bare model input: the model input plus
  extra arrays (mixup permutation and weights, a teacher's input, …) that the teacher and the
  loss see as additional entries of the batch."""
  model_input: Any
  extras: Dict[str, Any]


def split_prepared(prepared) -> Tuple[Any, Dict[str, Any]]:
  """`make_inputs`' result → (model input, extras of the batch)."""
  if isinstance(prepared, Prepared):
    return prepared.model_input, prepared.extras
  return prepared, {}


def default_logits(output):
  return output["logits"] if isinstance(output, dict) else output


@dataclasses.dataclass(frozen=True)
class Task:
  """The recipe-specific parts of training.

  model: Flax module called as `model.apply(variables, inputs, train=…)` (plus
    `return_features=True` when `features`).
  make_inputs: (key or None, batch) → model input or `Prepared`, on the device inside jit; key
    None means evaluation (no augmentation).
  loss: (model output in training mode, batch, key, loss_state) →
    (scalar loss, {name: scalar} metrics, new loss_state). The batch holds the `Prepared.extras`
    and, with a teacher, its output under "teacher".
  logits: model output → (B, C) logits for evaluation.
  init_loss_state: key → the initial loss state (e.g. CRD's memory banks), kept in the train
    state, checkpointed and restored with it; None when the loss keeps no state.
  features: call the model with `return_features=True` (a dict with "logits", "embedding", …).
  teacher: (frozen_variables, batch) → teacher output, run inside the jitted step on the same
    augmented batch (frozen: no gradient, not in the train state).
  frozen_variables: the teachers' variables (or cached teacher targets), handed to every step
    as a replicated argument (not baked into the compiled program).
  train_kwargs: batch (with the teacher output) → extra keyword arguments of the model in
    training (e.g. teacher feature maps for trainable DFM adapters); None: none.
  ema_teacher: the teacher also sees the student's EMA: its frozen dict (`frozen_variables`,
    a dict or None) gains `"ema"` = {"params": EMA params, "batch_stats": the student's batch
    statistics}, both as they were before this step's update (needs `config.ema_decay` > 0).
  """
  model: nn.Module
  make_inputs: Callable[[Optional[jax.Array], Batch], Any]
  loss: Callable[[Any, Batch, jax.Array, Any], tuple]
  logits: Callable[[Any], jax.Array] = default_logits
  init_loss_state: Optional[Callable[[jax.Array], Any]] = None
  features: bool = False
  teacher: Optional[Callable[[Any, Batch], Any]] = None
  frozen_variables: Any = None
  train_kwargs: Optional[Callable[[Batch], Dict[str, Any]]] = None
  ema_teacher: bool = False

  def apply(self, variables, inputs, **kwargs):
    if self.features:
      kwargs["return_features"] = True
    return self.model.apply(variables, inputs, **kwargs)


def check_task(task: Task, ema_decay: float) -> None:
  """Errors for a task the step cannot run (named after the field or config key at fault)."""
  if not task.ema_teacher:
    return
  if task.teacher is None:
    raise ValueError("Task.ema_teacher is set but the task has no teacher function")
  if not ema_decay > 0:
    raise ValueError(f"Task.ema_teacher needs an EMA of the student: config.ema_decay must be "
                     f"in (0, 1), got {ema_decay}")
  frozen = task.frozen_variables
  if frozen is not None and not isinstance(frozen, Mapping):
    raise ValueError("Task.ema_teacher: frozen_variables must be a dict (or None) to hold "
                     f"the EMA under {EMA_KEY!r}, got {type(frozen).__name__}")
  if frozen is not None and EMA_KEY in frozen:
    raise ValueError(f"Task.ema_teacher: frozen_variables already has a key {EMA_KEY!r}")


def global_norm(tree) -> jax.Array:
  """√Σ x² over every leaf, in float32 (a scalar)."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def train_step(state: TrainState, batch: Batch, frozen: Any, *, task: Task,
               tx: optax.GradientTransformation, ema_decay: float = 0.0,
               frozen_mask: Optional[Any] = None) -> Tuple[TrainState, Metrics]:
  """One optimizer step of `task` on a global batch (pure; jitted by `loop.Trainer`).

  Args:
    state: the train state before the step (`state.step` = steps done so far).
    batch: the global batch: `waveform` (B, samples) float32 (or whatever `task.make_inputs`
      reads), `label` (B,) int32, `mask` (B,) bool and other per-example columns (B, …).
    frozen: `task.frozen_variables` as placed on the devices (replicated), or None.
    task: the model, inputs, teacher and loss.
    tx: the optax transformation over the whole params tree (`optim.make_optimizer`).
    ema_decay: momentum of `state.ema_params` (used when the state keeps an EMA).
    frozen_mask: a tree like `state.params` of Python bools, True where a parameter is frozen
      (`optim.frozen_mask`); None: every parameter is trained.

  Returns:
    (new state, metrics): the state with `step + 1`, new params, batch statistics, optimizer
    state, EMA and loss state; metrics {name: scalar}: the loss's own, plus `loss` and
    `grad_norm` (global L2 norm of the trainable parameters' gradient, before clipping).
  """
  rng = jax.random.fold_in(state.rng, state.step)
  k_inputs, k_model, k_loss, k_patchout = jax.random.split(rng, 4)
  inputs, extras = split_prepared(task.make_inputs(k_inputs, batch))
  batch = dict(batch, **extras)
  if task.teacher is not None:
    teacher_vars = frozen
    if task.ema_teacher:
      teacher_vars = dict(frozen or {}, **{EMA_KEY: {"params": state.ema_params,
                                                     "batch_stats": state.batch_stats}})
    batch["teacher"] = jax.lax.stop_gradient(task.teacher(teacher_vars, batch))

  model_kwargs = {} if task.train_kwargs is None else task.train_kwargs(batch)
  if frozen_mask is None:
    trainable, fixed = state.params, None
    merge = lambda t: t
  else:
    trainable, fixed = optim.split_frozen(state.params, frozen_mask)
    merge = lambda t: optim.merge_frozen(t, fixed)

  def loss_fn(trainable):
    output, updates = task.apply(
        {"params": merge(trainable), "batch_stats": state.batch_stats}, inputs, train=True,
        mutable=["batch_stats"], rngs={"dropout": k_model, "patchout": k_patchout},
        **model_kwargs)
    loss, metrics, loss_state = task.loss(output, batch, k_loss, state.loss_state)
    return loss, (metrics, updates.get("batch_stats", state.batch_stats), loss_state)

  (loss, (metrics, batch_stats, loss_state)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(trainable)
  ema = state.ema_params
  if frozen_mask is None:
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = jax.tree.map(lambda p, u: p + u.astype(p.dtype), state.params, updates)
    if ema is not None:
      ema = ema_lib.update(ema, params, ema_decay)
  else:
    # The optimizer takes the whole tree: zeros stand for the frozen gradients (its frozen
    # branch, `set_to_zero`, never reads them); only trainable parameters are updated.
    full_grads = optim.merge_frozen(grads, jax.tree.map(jnp.zeros_like, fixed))
    updates, opt_state = tx.update(full_grads, state.opt_state, state.params)
    new_trainable = jax.tree.map(lambda p, u: p + u.astype(p.dtype), trainable,
                                 optim.split_frozen(updates, frozen_mask)[0])
    params = merge(new_trainable)
    if ema is not None:   # the average of a constant is the constant (exactly, not m·θ + (1-m)·θ)
      ema_trainable = optim.split_frozen(ema, frozen_mask)[0]
      ema = optim.merge_frozen(ema_lib.update(ema_trainable, new_trainable, ema_decay), fixed)
  metrics = dict(metrics, loss=loss, grad_norm=global_norm(grads))
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, ema_params=ema, loss_state=loss_state)
  return new_state, metrics


def predict_step(params: Any, batch_stats: Any, batch: Batch, *, task: Task) -> jax.Array:
  """Evaluation logits of a global batch (no augmentation, model in eval mode).

  Args:
    params: the model parameters (or their EMA).
    batch_stats: BatchNorm running statistics ({} when the model has none).
    batch: the global batch, as `task.make_inputs(None, batch)` reads it.
    task: the model and its `logits` selector.

  Returns:
    (B, C) float32 logits.
  """
  inputs, _ = split_prepared(task.make_inputs(None, batch))
  output = task.apply({"params": params, "batch_stats": batch_stats}, inputs, train=False)
  return task.logits(output).astype(jnp.float32)
