"""The train step: one optimizer update of a task's model on a global batch (jitted by `loop`).

What happens in `train_step`, in order:
  1. keys: `fold_in(state.rng, state.step)` split into (inputs, model streams, loss); the model
     streams key is split into one key per name of `task.rng_streams` (e.g. dropout);
  2. `task.make_inputs(key, batch)`: the model input (frontend, augmentation) plus extras that
     join the batch (`Prepared`);
  3. the teachers, once: `task.teacher(frozen, batch)` → {name: outputs} (stop_gradient), handed
     to the loss as `ctx.teachers`; with `task.ema_teacher` the frozen dict also holds `"ema"`:
     the student's EMA variables before this step's update ({"params": state.ema_params,
     "batch_stats": state.batch_stats});
  4. gradients of `task.loss(output, batch, ctx)` with respect to the trainable parameters only
     (those not frozen by `optimizer.param_groups`; frozen ones are closed over, so they get no
     gradient);
  5. the optax update (frozen parameters are merged back unchanged, bit for bit);
  6. the EMA of the trainable parameters (`ema.update`), when the run keeps one; a frozen
     parameter's EMA is the parameter itself.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Iterator, Mapping, NamedTuple, Optional, Tuple

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


class StepContext(NamedTuple):
  """What the loss sees besides the model output and the batch.

  key: the loss's own PRNG key (e.g. CRD's negatives); loss_state: the state the loss keeps
  (`Task.init_loss_state`, e.g. memory banks); teachers: {name: outputs} of this step's
  teachers (computed once, no gradient); step: int32 scalar, the optimizer steps done before
  this one (for ramps of a term's weight).
  """
  key: jax.Array
  loss_state: Any
  teachers: Mapping[str, Any]
  step: jax.Array


def split_prepared(prepared) -> Tuple[Any, Dict[str, Any]]:
  """`make_inputs`' result → (model input, extras of the batch)."""
  if isinstance(prepared, Prepared):
    return prepared.model_input, prepared.extras
  return prepared, {}


def default_outputs(output, batch) -> Dict[str, jax.Array]:
  """{"logits": …}: the model output itself, or its "logits" entry when it is a dict."""
  return {"logits": output["logits"] if isinstance(output, dict) else output}


Evaluator = Callable[[Mapping[str, Any], Any], Iterator[Tuple[str, Any]]]


@dataclasses.dataclass(frozen=True)
class Task:
  """The recipe-specific parts of training, built by a task family (`jax_asc/tasks`).

  model: Flax module called as `model.apply(variables, inputs, train=…, **apply_kwargs)`.
  make_inputs: (key or None, batch) → model input or `Prepared`, on the device inside jit; key
    None means evaluation (no augmentation).
  loss: (model output in training mode, batch, ctx: `StepContext`) →
    (scalar loss, {name: scalar} metrics, new loss_state). The batch holds the `Prepared.extras`.
  outputs: (model output in eval mode, batch) → {name: (B, …)} named per-example outputs
    (logits, embedding, features, waveforms, …) that predict and evaluation read.
  evaluators: functions (outputs {name: (N, …)} of a whole split, the split) → iterator of
    (metric name, value); the loop never calls them (stages do).
  rng_streams: names of the model's random streams in training (e.g. "dropout").
  apply_kwargs: extra keyword arguments of every model call (e.g. return_features=True).
  init_loss_state: key → the initial loss state (e.g. CRD's memory banks), kept in the train
    state, checkpointed and restored with it; None when the loss keeps no state.
  teacher: (frozen_variables, batch) → {teacher name: outputs}, run inside the jitted step on
    the same augmented batch (frozen: no gradient, not in the train state).
  frozen_variables: the teachers' variables (online models), handed to every step as an
    argument (not baked into the compiled program).
  frozen_sharding: mesh → shardings like `frozen_variables` (default: replicated).
  train_kwargs: (batch, teachers) → extra keyword arguments of the model in training (e.g.
    teacher feature maps for trainable DFM adapters); None: none.
  ema_teacher: the teacher also sees the student's EMA: its frozen dict (`frozen_variables`,
    a dict or None) gains `"ema"` = {"params": EMA params, "batch_stats": the student's batch
    statistics}, both as they were before this step's update.
  ema_decay: the EMA momentum the task needs (an EMA teacher), or None: the run's
    `config.ema_decay` decides.
  columns: the batch columns the task reads (None: every numeric column of the split).
  """
  model: nn.Module
  make_inputs: Callable[[Optional[jax.Array], Batch], Any]
  loss: Callable[[Any, Batch, StepContext], tuple]
  outputs: Callable[[Any, Batch], Dict[str, jax.Array]] = default_outputs
  evaluators: Tuple[Evaluator, ...] = ()
  rng_streams: Tuple[str, ...] = ()
  apply_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  init_loss_state: Optional[Callable[[jax.Array], Any]] = None
  teacher: Optional[Callable[[Any, Batch], Any]] = None
  frozen_variables: Any = None
  frozen_sharding: Optional[Callable[[Any], Any]] = None
  train_kwargs: Optional[Callable[[Batch, Mapping[str, Any]], Dict[str, Any]]] = None
  ema_teacher: bool = False
  ema_decay: Optional[float] = None
  columns: Optional[Tuple[str, ...]] = None

  def apply(self, variables, inputs, **kwargs):
    return self.model.apply(variables, inputs, **dict(self.apply_kwargs, **kwargs))


def check_task(task: Task, ema_decay: float) -> None:
  """Errors for a task the step cannot run (named after the field or config key at fault)."""
  if task.ema_decay is not None and ema_decay != task.ema_decay:
    raise ValueError(f"the task needs an EMA with momentum {task.ema_decay}, the run keeps "
                     f"{ema_decay} (config.ema_decay)")
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


def run_ema_decay(task: Task, config_decay: float) -> float:
  """The EMA momentum of a run: the task's when it needs one (an EMA teacher), else
  `config.ema_decay`; both set and different is an error."""
  config_decay = float(config_decay or 0.0)
  if task.ema_decay is None:
    return config_decay
  if config_decay and config_decay != task.ema_decay:
    raise ValueError(f"config.ema_decay={config_decay} differs from the EMA teacher's momentum "
                     f"{task.ema_decay}: a run keeps one EMA of the student")
  return float(task.ema_decay)


def global_norm(tree) -> jax.Array:
  """√Σ x² over every leaf, in float32 (a scalar)."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def train_step(state: TrainState, batch: Batch, frozen: Any, *, task: Task,
               tx: optax.GradientTransformation, ema_decay: float = 0.0,
               frozen_mask: Optional[Any] = None) -> Tuple[TrainState, Metrics]:
  """One optimizer step of `task` on a global batch (pure; jitted by `loop.Trainer`).

  Args:
    state: the train state before the step (`state.step` = steps done so far).
    batch: the global batch: the columns `task.make_inputs` and `task.loss` read (B, …) (e.g.
      `waveform` (B, C, S) float32, `label` (B,) int32) and `mask` (B,) bool.
    frozen: `task.frozen_variables` as placed on the devices, or None.
    task: the model, inputs, teachers and loss.
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
  k_inputs, k_streams, k_loss = jax.random.split(rng, 3)
  streams = dict(zip(task.rng_streams, jax.random.split(k_streams, max(len(task.rng_streams),
                                                                       1))))
  inputs, extras = split_prepared(task.make_inputs(k_inputs, batch))
  batch = dict(batch, **extras)
  teachers = {}
  if task.teacher is not None:
    teacher_vars = frozen
    if task.ema_teacher:
      teacher_vars = dict(frozen or {}, **{EMA_KEY: {"params": state.ema_params,
                                                     "batch_stats": state.batch_stats}})
    teachers = jax.lax.stop_gradient(task.teacher(teacher_vars, batch))

  model_kwargs = {} if task.train_kwargs is None else task.train_kwargs(batch, teachers)
  if frozen_mask is None:
    trainable, fixed = state.params, None
    merge = lambda t: t
  else:
    trainable, fixed = optim.split_frozen(state.params, frozen_mask)
    merge = lambda t: optim.merge_frozen(t, fixed)

  def loss_fn(trainable):
    output, updates = task.apply(
        {"params": merge(trainable), "batch_stats": state.batch_stats}, inputs, train=True,
        mutable=["batch_stats"], rngs=streams, **model_kwargs)
    ctx = StepContext(key=k_loss, loss_state=state.loss_state, teachers=teachers,
                      step=state.step)
    loss, metrics, loss_state = task.loss(output, batch, ctx)
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


def predict_step(params: Any, batch_stats: Any, batch: Batch, *,
                 task: Task) -> Dict[str, jax.Array]:
  """Named evaluation outputs of a global batch (no augmentation, model in eval mode).

  Args:
    params: the model parameters (or their EMA).
    batch_stats: BatchNorm running statistics ({} when the model has none).
    batch: the global batch, as `task.make_inputs(None, batch)` reads it.
    task: the model and its `outputs`.

  Returns:
    {name: (B, …)} `task.outputs` (floating outputs as float32).
  """
  inputs, _ = split_prepared(task.make_inputs(None, batch))
  output = task.apply({"params": params, "batch_stats": batch_stats}, inputs, train=False)
  named = task.outputs(output, batch)
  return {k: v.astype(jnp.float32) if jnp.issubdtype(v.dtype, jnp.floating) else v
          for k, v in named.items()}
