"""The one training loop every recipe reuses.

A recipe hands in a `Task` (`step.Task`, built by a task family of `jax_asc/tasks`): the model,
how a batch becomes model input on the device (frontend and augmentation, with an explicit
key), the teachers, the loss and the named outputs. What one step does is `step.train_step`;
training from data held on the accelerator is `on_accelerator`. The loop owns the rest: the
train state, jitting the step (sharded, buffer donating), the data order, chunks of steps,
evaluation cadence, metrics, checkpoints, resuming.

Resume order (what happens when a run starts):
  1. build the optimizer and an initial state from `config.seed` (same shapes as any checkpoint);
  2. if `<workdir>/checkpoints/latest` holds a step, restore the whole state from it;
  3. continue the data order from that step: epoch = step // steps_per_epoch and the batch within
     it (the order depends only on (seed, epoch)), and per-step randomness is
     `fold_in(state.rng, step)`, so a resumed run ends with exactly the parameters of an
     uninterrupted one.

A non-finite loss raises `FloatingPointError` naming the first bad step; checks happen before
every checkpoint save, so a bad state is never written over the last good one.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics
from clu import periodic_actions
from jax.experimental import multihost_utils

from jax_asc.train import checkpoint as checkpoint_lib
from jax_asc.train import mesh as mesh_lib
from jax_asc.train import on_accelerator
from jax_asc.train import optim
from jax_asc.train import state as state_lib
from jax_asc.train import step as step_lib
from jax_asc.train import writers
from jax_asc.train.state import TrainState

# Models with fewer numbers in their train state than this are initialised by an unoptimised
# (faster to compile) program.
INIT_O0_LIMIT = 10_000_000

Batch = Dict[str, jax.Array]


# The task lives beside the step; these names stay importable from the loop.
Task = step_lib.Task
Prepared = step_lib.Prepared
StepContext = step_lib.StepContext


@dataclasses.dataclass(frozen=True)
class TrainData:
  """The training data as the loop sees it (built by a stage from `jax_asc.data`).

  steps_per_epoch: global steps in one epoch.
  batches: start_step → iterator of this host's batches (dicts of NumPy arrays) from that
    global step on, in the deterministic order of the run.
  example: a host batch with the shapes of training (default: the first of `batches`).
  accelerator: when set, `fit` trains from data held on the accelerators instead of `batches`:
    an object with `arrays` ({name: (N, …) NumPy}, placed replicated on every device),
    `rows(step)` → (global_batch,) row indices of a global step, `steps_per_call` and
    `gather(arrays, rows)` → the batch inside jit (`jax_asc.data.on_accelerator.AcceleratorData`).
  """
  steps_per_epoch: int
  batches: Callable[[int], Iterator[Dict[str, np.ndarray]]]
  example: Optional[Callable[[], Dict[str, np.ndarray]]] = None
  accelerator: Optional[Any] = None

  def example_batch(self) -> Dict[str, np.ndarray]:
    """A host batch with the shapes of training (for initialisation)."""
    if self.example is not None:
      return self.example()
    batches = self.batches(0)
    try:
      return next(batches)
    finally:
      getattr(batches, "close", lambda: None)()


class Trainer:
  """Jitted, sharded init / train / predict functions for one task and optimizer.

  `frozen_mask`: True where a parameter is frozen (`optim.frozen_mask`), None: all trained.
  """

  def __init__(self, task: Task, tx, mesh, *, ema_decay: float = 0.0,
               frozen_mask: Optional[Any] = None):
    step_lib.check_task(task, ema_decay)
    self.task, self.tx, self.mesh, self.ema_decay = task, tx, mesh, ema_decay
    self.frozen_mask = frozen_mask
    rep, data = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
    self._rep = rep
    frozen_sharding = rep
    if task.frozen_sharding is not None and task.frozen_variables is not None:
      frozen_sharding = task.frozen_sharding(mesh)
    self._frozen_sharding = frozen_sharding
    self._frozen = jax.device_put(task.frozen_variables, frozen_sharding)
    self._step = functools.partial(step_lib.train_step, task=task, tx=tx, ema_decay=ema_decay,
                                   frozen_mask=frozen_mask)
    self._train = jax.jit(self._step, in_shardings=(rep, data, frozen_sharding),
                          out_shardings=(rep, rep), donate_argnums=(0,))
    self._predict = jax.jit(functools.partial(step_lib.predict_step, task=task),
                            in_shardings=(rep, rep, data), out_shardings=data)
    self._train_many = None

  def train_step(self, state: TrainState, batch: Batch):
    """One optimizer step on a global batch: (new state, {metric: scalar})."""
    return self._train(state, batch, self._frozen)

  def put_accelerator_data(self, data) -> Dict[str, jax.Array]:
    """The data's arrays on every device (replicated), for `train_steps`."""
    return jax.device_put({k: np.asarray(v) for k, v in data.arrays.items()}, self._rep)

  def train_steps(self, state: TrainState, gather, arrays: Dict[str, jax.Array],
                  rows: np.ndarray, active: int):
    """`active` optimizer steps (the first rows of `rows`, (K, global_batch) this host's
    columns) on batches built by `gather(arrays, rows)` inside one compiled scan of length K;
    rows past `active` are skipped. Returns (new state, {metric: (K,) per step, 0 where
    skipped})."""
    if self._train_many is None or self._train_many[0] != gather:   # (a bound method: ==)
      data = mesh_lib.batch_sharded(self.mesh, axis=1)
      scan = functools.partial(on_accelerator.train_steps, self._step, gather)
      self._train_many = (gather, jax.jit(
          scan, in_shardings=(self._rep, self._rep, data, self._rep, self._frozen_sharding),
          out_shardings=(self._rep, self._rep), donate_argnums=(0,)))
    rows = mesh_lib.global_array(np.asarray(rows, np.int32), self.mesh, axis=1)
    return self._train_many[1](state, arrays, rows, jnp.int32(active), self._frozen)

  def init(self, seed: int, example_batch: Batch) -> TrainState:
    def init_fn(batch):
      rng = jax.random.PRNGKey(seed)
      init_rng, state_rng, loss_rng = jax.random.split(rng, 3)
      inputs, _ = step_lib.split_prepared(self.task.make_inputs(None, batch))
      variables = self.task.model.init(init_rng, inputs, train=False,
                                       **self.task.apply_kwargs)
      loss_state = (None if self.task.init_loss_state is None
                    else self.task.init_loss_state(loss_rng))
      return state_lib.create(variables, self.tx, state_rng, ema=self.ema_decay > 0,
                              loss_state=loss_state)
    lowered = jax.jit(init_fn, out_shardings=self._rep).lower(example_batch)
    numbers = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(lowered.out_info))
    # Initialisation runs once. For small models LLVM's optimisations cost more compile time than
    # they save (tiny CP-Mobile: 4.5 s → 1.5 s); for PaSST-S (86 M parameters) they pay off.
    options = {"xla_backend_optimization_level": 0} if numbers < INIT_O0_LIMIT else {}
    return lowered.compile(compiler_options=options)(example_batch)

  def predict(self, state: TrainState, local_batches: Iterable[Dict[str, np.ndarray]], *,
              num_examples: int, use_ema: bool = False,
              outputs: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
    """{name: (num_examples, …)} named outputs (`Task.outputs`; `outputs` picks some) of masked
    evaluation batches (`mask` marks real rows), in order."""
    params = state.ema_params if use_ema else state.params
    if params is None:
      raise ValueError("use_ema=True but the run kept no EMA parameters (ema_decay = 0)")
    gathered: Dict[str, list] = {}
    for local in local_batches:
      batch = mesh_lib.global_batch(local, self.mesh)
      named = self._predict(params, state.batch_stats, batch)
      if outputs is not None:
        missing = sorted(set(outputs) - set(named))
        if missing:
          raise KeyError(f"the task has no output(s) {missing}; its outputs: {sorted(named)}")
        named = {k: named[k] for k in outputs}
      mask = np.asarray(multihost_utils.process_allgather(batch["mask"], tiled=True))
      for name, value in named.items():
        value = np.asarray(multihost_utils.process_allgather(value, tiled=True))
        gathered.setdefault(name, []).append(value[mask])
    result = {k: np.concatenate(v) for k, v in gathered.items()}
    for name, value in result.items():
      if len(value) != num_examples:
        raise RuntimeError(f"predicted {len(value)} rows of {name!r} for {num_examples} "
                           "examples")
    return result


_NO_BAD_STEP = np.iinfo(np.int32).max


@functools.partial(jax.jit, static_argnums=(4,), donate_argnums=(0,))
def _track(tracker, metrics, first_step, active, restart: bool):
  """Sums the scalar metrics of `active` steps (per-step values along axis 0, the first from
  global step `first_step`; restarted after each log) and keeps the first step whose loss is
  not finite; one dispatch per call, so the host never waits on the device here."""
  metrics = {k: jnp.asarray(v, jnp.float32).reshape(-1) for k, v in metrics.items()}
  steps = first_step + jnp.arange(metrics["loss"].shape[0])
  valid = jnp.arange(metrics["loss"].shape[0]) < active
  bad = jnp.min(jnp.where(valid & ~jnp.isfinite(metrics["loss"]), steps, _NO_BAD_STEP))
  metrics = {k: jnp.sum(jnp.where(valid, v, 0.0)) for k, v in metrics.items()}
  bad = bad.astype(jnp.int32)
  if tracker is None:
    return metrics, bad
  sums, first_bad = tracker
  if not restart:
    metrics = jax.tree.map(jnp.add, sums, metrics)
  return metrics, jnp.minimum(first_bad, bad)


def _next_stop(step: int, total_steps: int, every: Sequence[int]) -> int:
  """The first step after `step` at which the loop logs, evaluates or saves."""
  return min([total_steps] + [(step // e + 1) * e for e in every if e])


@dataclasses.dataclass
class Setup:
  """A trainer with its optimizer and the initial state of a run (before any restore)."""
  trainer: Trainer
  state: TrainState
  schedule: Callable[[int], jax.Array]
  steps_per_epoch: int
  total_steps: int


def setup(task: Task, config, train_data: TrainData, mesh=None,
          initialize: Optional[Callable[[TrainState], TrainState]] = None) -> Setup:
  """Optimizer, trainer and initial state from `config.seed`: the same shapes as a checkpoint.

  `mesh` defaults to all devices of all hosts (`mesh.make_mesh()`). `initialize` transforms the
  fresh state (e.g. loads pretrained or general-model weights); a restored checkpoint wins.
  """
  mesh = mesh_lib.make_mesh() if mesh is None else mesh
  mesh_lib.check_batch_size(config.batch_size, mesh)
  total_steps = config.num_epochs * train_data.steps_per_epoch
  example = mesh_lib.global_batch(train_data.example_batch(), mesh)
  abstract_params = jax.eval_shape(
      lambda b: task.model.init(jax.random.PRNGKey(0),
                                step_lib.split_prepared(task.make_inputs(None, b))[0],
                                train=False, **task.apply_kwargs),
      example)["params"]
  tx, schedule = optim.make_optimizer(config.optimizer, config.schedule, abstract_params,
                                      total_steps, train_data.steps_per_epoch)
  trainer = Trainer(task, tx, mesh, ema_decay=step_lib.run_ema_decay(task, config.ema_decay),
                    frozen_mask=optim.frozen_mask(config.optimizer, abstract_params))
  state = trainer.init(config.seed, example)
  if initialize is not None:
    state = jax.device_put(initialize(state), mesh_lib.replicated(mesh))
  return Setup(trainer, state, schedule, train_data.steps_per_epoch, total_steps)


@dataclasses.dataclass
class FitResult:
  state: TrainState
  trainer: Trainer
  steps_per_epoch: int
  last_eval: Dict[str, float]


def fit(task: Task, config, workdir: str, train_data: TrainData, *,
        evaluate: Optional[Callable[[Trainer, TrainState], Dict[str, float]]] = None,
        hooks: Sequence[Callable[[int, TrainState], None]] = (), mesh=None,
        initialize: Optional[Callable[[TrainState], TrainState]] = None) -> FitResult:
  """Trains `task` on `train_data` as `config` says; resumes from `workdir` when it can.

  Config keys used: seed, batch_size, num_epochs, optimizer.* (param_groups too), schedule.*,
  ema_decay (unless the task's EMA teacher sets it),
  eval_every_epochs, log_every_steps,
  checkpoint.{every_steps, every_epochs, best_metric, best_mode, keep_best}.
  `evaluate(trainer, state)` returns scalar metrics (logged; `checkpoint.best_metric` picks the
  best-k checkpoints). `hooks` run after every step with (steps done, state) (on the device
  path after every call, which may cover several steps). `initialize`: see `setup`.
  """
  run = setup(task, config, train_data, mesh, initialize)
  trainer, state, schedule = run.trainer, run.state, run.schedule
  steps_per_epoch, total_steps = run.steps_per_epoch, run.total_steps

  ckpt_cfg = config.checkpoint
  every_epochs = int(ckpt_cfg.every_epochs)
  if every_epochs < 1:
    raise ValueError(f"checkpoint.every_epochs must be at least 1, got {ckpt_cfg.every_epochs}")
  checkpoints = checkpoint_lib.Checkpoints(
      workdir, best_metric=ckpt_cfg.best_metric, best_mode=ckpt_cfg.best_mode,
      keep_best=ckpt_cfg.keep_best if evaluate is not None else 0)
  restored = checkpoints.restore(state, "latest")
  start_step = 0
  if restored is not None:
    state, _ = restored
    start_step = int(state.step)
    logging.info("Resuming from step %d (%s)", start_step, workdir)
    print(f"Resuming from the checkpoint at step {start_step}", flush=True)
  writer = writers.create(workdir)
  if start_step == 0:
    writer.write_hparams({"steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                          "devices": jax.device_count(), "hosts": jax.process_count()})
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                             every_steps=max(steps_per_epoch, 1))
  accum = int(config.optimizer.grad_accum_steps)

  accelerator_data = train_data.accelerator
  if accelerator_data is not None:
    batches, arrays = None, trainer.put_accelerator_data(accelerator_data)
    per_call = max(int(accelerator_data.steps_per_call), 1)
  else:
    batches = train_data.batches(start_step)
  stops = (steps_per_epoch, config.log_every_steps, ckpt_cfg.every_steps)
  tracker = None          # (metric sums since the last log, first non-finite step), on device
  steps_summed = 0
  last_eval: Dict[str, float] = {}
  epoch_start = time.time()

  def check_finite():
    if tracker is not None:
      bad = int(tracker[1])
      if bad != _NO_BAD_STEP:
        raise FloatingPointError(
            f"non-finite loss at step {bad} (workdir {workdir}); the last good checkpoint is "
            f"kept in {workdir}/checkpoints/latest")

  def save(step, eval_metrics=None):
    check_finite()
    meta = {"step": step, "epoch": step / steps_per_epoch}
    checkpoints.save_latest(step, state, meta)
    if eval_metrics:
      checkpoints.save_best(step, state, meta, eval_metrics)

  try:
    done = start_step
    while done < total_steps:
      step = done
      if accelerator_data is None:
        batch = mesh_lib.global_batch(next(batches), trainer.mesh)
        state, step_metrics = trainer.train_step(state, batch)
        count = 1
      else:   # up to the next log, evaluation or checkpoint, at most `per_call` steps
        count = min(per_call, _next_stop(step, total_steps, stops) - step)
        rows = np.stack([accelerator_data.rows(s) for s in range(step, step + count)] +
                        [accelerator_data.rows(step)] * (per_call - count))
        host = jax.process_index()
        per_host = rows.shape[1] // jax.process_count()
        state, step_metrics = trainer.train_steps(
            state, accelerator_data.gather, arrays,
            rows[:, host * per_host:(host + 1) * per_host], count)
      tracker = _track(tracker, step_metrics, step + 1, count, steps_summed == 0)
      steps_summed += count
      done = step + count
      for finished in range(step + 1, done + 1):   # clu's progress expects every step
        progress(finished)
      for hook in hooks:
        hook(done, state)

      epoch_end = done % steps_per_epoch == 0
      if done % config.log_every_steps == 0 or epoch_end or done == total_steps:
        check_finite()
        scalars = {f"train/{k}": float(clu_metrics.Average(total=v, count=steps_summed).compute())
                   for k, v in tracker[0].items()}
        scalars["train/learning_rate"] = float(schedule(max(done - 1, 0) // accum))
        writer.write_scalars(done, scalars)
        steps_summed = 0
      if not (epoch_end or done == total_steps):
        if ckpt_cfg.every_steps and done % ckpt_cfg.every_steps == 0:
          save(done)
        continue
      epoch = done // steps_per_epoch
      eval_metrics = {}
      if evaluate is not None and (epoch % config.eval_every_epochs == 0 or done == total_steps):
        check_finite()
        eval_metrics = evaluate(trainer, state)
        writer.write_scalars(done, eval_metrics)
        last_eval = eval_metrics
      if eval_metrics or epoch % every_epochs == 0 or done == total_steps:
        save(done, eval_metrics)
      seconds = time.time() - epoch_start
      epoch_start = time.time()
      steps_done_here = done - max(start_step, (epoch - 1) * steps_per_epoch)
      rate = steps_done_here / max(seconds, 1e-9)
      eta = (total_steps - done) / max(rate, 1e-9)
      line = (f"epoch {epoch}/{config.num_epochs} step {done}/{total_steps} "
              f"loss {scalars['train/loss']:.4f} lr {scalars['train/learning_rate']:.2e} "
              f"{seconds:.1f}s ({rate:.2f} steps/s, ETA {int(eta) // 60}:{int(eta) % 60:02d})")
      if ckpt_cfg.best_metric in eval_metrics:   # the metric that picks the best checkpoints
        line += f" {ckpt_cfg.best_metric} {eval_metrics[ckpt_cfg.best_metric]:.4f}"
      print(line, flush=True)
    check_finite()
  finally:
    getattr(batches, "close", lambda: None)()   # a tf.data generator (None on the accelerator path)
    checkpoints.wait()
    checkpoints.close()
    writer.flush()
  return FitResult(state, trainer, steps_per_epoch, last_eval)
