"""The train room with toy tasks: exact logged numbers from a fixed-logit model (scenic's
test_classification_trainer pattern), an EMA teacher the loss can see, and the room's imports."""
import ast
import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from jax_asc.train import loop
from jax_asc.train import mesh as mesh_lib
from jax_asc.train import step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = 4


def _cross_entropy(logits, labels):
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def _config(batch_size, num_epochs, **optimizer):
  config = common.base_config()
  config.batch_size, config.num_epochs = batch_size, num_epochs
  config.optimizer.update(name="sgd", momentum=0.0, weight_decay=0.0, **optimizer)
  config.schedule.name = "constant"
  config.log_every_steps = 1
  config.eval_every_epochs = 1
  config.checkpoint.update(best_metric="validation/accuracy", keep_best=1)
  return config


def _train_data(make_batch, steps_per_epoch):
  def batches(start_step):
    step = start_step
    while True:
      yield make_batch(step)
      step += 1
  return loop.TrainData(steps_per_epoch, batches)


def _eval_batches(x, labels, batch_size):
  for start in range(0, len(labels), batch_size):
    yield {"x": x[start:start + batch_size], "label": labels[start:start + batch_size],
           "mask": np.ones(min(batch_size, len(labels) - start), bool)}


def _accuracy_evaluator(x, labels, batch_size):
  def evaluate(trainer, state):
    logits = trainer.predict(state, _eval_batches(x, labels, batch_size),
                             num_examples=len(labels))["logits"]
    return {"validation/accuracy": float(np.mean(logits.argmax(-1) == labels))}
  return evaluate


def _jsonl(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------- fixed logits
class FixedLogits(nn.Module):
  """Logits = one bias vector (zeros at init) for every example, whatever the input."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    bias = self.param("bias", nn.initializers.zeros, (CLASSES,))
    return jnp.broadcast_to(bias, (x.shape[0], CLASSES))


def test_fixed_logits_give_exact_known_metrics_and_evaluations(tmp_path):
  """Every batch holds each class twice, so at zero logits the gradient is exactly 0: the logits
  stay fixed, and every logged number is known: loss log 4, accuracy 1/4 (argmax of a tie is
  class 0), grad_norm 0, the learning rate, and an evaluation accuracy of 3/8."""
  batch_size, steps_per_epoch, epochs = 8, 2, 3
  labels = np.tile(np.arange(CLASSES, dtype=np.int32), batch_size // CLASSES)

  def make_batch(step):
    return {"x": np.full((batch_size, 1), step, np.float32), "label": labels,
            "mask": np.ones(batch_size, bool)}

  def loss(logits, batch, ctx):
    accuracy = jnp.mean((logits.argmax(-1) == batch["label"]).astype(jnp.float32))
    return _cross_entropy(logits, batch["label"]), {"accuracy": accuracy}, ctx.loss_state

  task = loop.Task(model=FixedLogits(), make_inputs=lambda key, batch: batch["x"], loss=loss)
  eval_labels = np.array([0, 0, 0, 1, 2, 3, 3, 1], np.int32)
  evaluate = _accuracy_evaluator(np.zeros((8, 1), np.float32), eval_labels, 4)
  config = _config(batch_size, epochs, learning_rate=0.25)
  workdir = str(tmp_path / "fixed")
  seen_steps = []
  result = loop.fit(task, config, workdir, _train_data(make_batch, steps_per_epoch),
                    evaluate=evaluate, hooks=[lambda step, state: seen_steps.append(step)],
                    mesh=mesh_lib.make_mesh(jax.devices()[:1]))

  total = steps_per_epoch * epochs
  assert seen_steps == list(range(1, total + 1))
  assert int(result.state.step) == total
  np.testing.assert_array_equal(np.asarray(result.state.params["bias"]), np.zeros(CLASSES))
  assert result.last_eval == {"validation/accuracy": 0.375}

  rows = _jsonl(workdir)
  assert rows[0] == {"hparams": {"steps_per_epoch": "2", "total_steps": "6", "devices":
                                 str(jax.device_count()), "hosts": str(jax.process_count())}}
  train = [r for r in rows if "train/loss" in r]
  evals = [r for r in rows if "validation/accuracy" in r]
  assert [r["step"] for r in train] == list(range(1, total + 1))   # log_every_steps = 1
  for row in train:
    assert set(row) == {"step", "time", "train/loss", "train/accuracy", "train/grad_norm",
                        "train/learning_rate"}
    assert row["train/loss"] == pytest.approx(math.log(CLASSES), abs=2e-7)   # float32 log 4
    assert row["train/accuracy"] == 0.25
    assert row["train/grad_norm"] == 0.0
    assert row["train/learning_rate"] == 0.25
  assert [(r["step"], r["validation/accuracy"]) for r in evals] == [(2, 0.375), (4, 0.375),
                                                                    (6, 0.375)]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "latest"))) == ["6"]


def _one_class_task(batch_size):
  """(task, make_batch): the fixed-logit model under cross-entropy on batches of class 0 only."""
  def make_batch(step):
    return {"x": np.zeros((batch_size, 1), np.float32), "label": np.zeros(batch_size, np.int32),
            "mask": np.ones(batch_size, bool)}

  def loss(logits, batch, ctx):
    return _cross_entropy(logits, batch["label"]), {}, ctx.loss_state

  task = loop.Task(model=FixedLogits(), make_inputs=lambda key, batch: batch["x"], loss=loss)
  return task, make_batch


def test_fixed_logits_with_log_every_two_steps_average_them(tmp_path):
  """A moving bias: one class only, so each step's loss is known in closed form for SGD on the
  bias (softmax of z: grad = p − e_0); the logged value is the mean of the two steps."""
  batch_size = 4
  task, make_batch = _one_class_task(batch_size)
  config = _config(batch_size, 1, learning_rate=0.5)
  config.log_every_steps = 2
  workdir = str(tmp_path / "moving")
  loop.fit(task, config, workdir, _train_data(make_batch, 4),
           mesh=mesh_lib.make_mesh(jax.devices()[:1]))

  z, losses = np.zeros(CLASSES), []
  for _ in range(4):   # the reference in float64
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    losses.append(-np.log(p[0]))
    z = z - 0.5 * (p - np.eye(CLASSES)[0])
  train = [r for r in _jsonl(workdir) if "train/loss" in r]
  assert [r["step"] for r in train] == [2, 4]
  assert train[0]["train/loss"] == pytest.approx((losses[0] + losses[1]) / 2, rel=1e-6)
  assert train[1]["train/loss"] == pytest.approx((losses[2] + losses[3]) / 2, rel=1e-6)
  assert losses[0] == pytest.approx(math.log(CLASSES))


def test_the_latest_checkpoint_every_n_epochs_at_evaluations_and_at_the_end(tmp_path,
                                                                            monkeypatch):
  """checkpoint.every_epochs = 2 with evaluations every 3 epochs of 5 (2 steps each): the
  latest checkpoint after epochs 2, 3 (evaluated), 4 and 5 (the end); 0 is refused."""
  from jax_asc.train import checkpoint as checkpoint_lib
  saved = []
  save_latest = checkpoint_lib.Checkpoints.save_latest

  def record(self, step, state, meta):
    saved.append(step)
    return save_latest(self, step, state, meta)

  monkeypatch.setattr(checkpoint_lib.Checkpoints, "save_latest", record)
  batch_size = 4
  task, make_batch = _one_class_task(batch_size)
  config = _config(batch_size, 5, learning_rate=0.1)
  config.eval_every_epochs = 3
  config.checkpoint.every_epochs = 2

  def fit(workdir):
    return loop.fit(task, config, str(tmp_path / workdir), _train_data(make_batch, 2),
                    evaluate=lambda trainer, state: {"validation/accuracy": 0.5},
                    mesh=mesh_lib.make_mesh(jax.devices()[:1]))

  fit("every_2")
  assert saved == [4, 6, 8, 10]
  config.checkpoint.every_epochs = 0
  with pytest.raises(ValueError, match="checkpoint.every_epochs must be at least 1"):
    fit("every_0")


# ----------------------------------------------------------------------------- EMA teacher
class TinyNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(16)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(CLASSES)(nn.relu(x))


def _clusters(n, seed):
  rng = np.random.default_rng(seed)
  centres = np.random.default_rng(123).normal(0, 2.0, (CLASSES, 8))
  labels = rng.integers(0, CLASSES, n).astype(np.int32)
  x = centres[labels] + rng.normal(0, 1.0, (n, 8))
  return x.astype(np.float32), labels


def _ema_teacher_task(probe: bool):
  """CE + KD (T = 2) towards the predictions of the student's own EMA (report 004's PI-KD form).
  `probe`: the loss also returns what the teacher saw (for the exactness check)."""
  model = TinyNet()

  def teacher(frozen, batch):
    logits = model.apply(frozen["ema"], batch["x"], train=False)
    out = {"log_probs": jax.nn.log_softmax(logits / 2.0)}
    if probe:
      out["seen"] = frozen["ema"]
    return {"ema": out}

  def loss(logits, batch, ctx):
    ce = _cross_entropy(logits, batch["label"])
    log_q = jax.nn.log_softmax(logits / 2.0)
    teacher = ctx.teachers["ema"]
    p = jnp.exp(teacher["log_probs"])
    kd = 4.0 * jnp.mean(jnp.sum(p * (teacher["log_probs"] - log_q), axis=-1))
    metrics = {"ce": ce, "kd": kd}
    if probe:
      metrics["seen"] = teacher["seen"]
    return ce + kd, metrics, ctx.loss_state

  return loop.Task(model=model, make_inputs=lambda key, batch: batch["x"], loss=loss,
                   teacher=teacher, ema_teacher=True)


def _cluster_data(batch_size):
  x, labels = _clusters(256, 0)
  steps_per_epoch = len(labels) // batch_size

  def make_batch(step):
    order = np.random.default_rng(step // steps_per_epoch).permutation(len(labels))
    rows = order[(step % steps_per_epoch) * batch_size:][:batch_size]
    return {"x": x[rows], "label": labels[rows], "mask": np.ones(batch_size, bool)}
  return make_batch, steps_per_epoch


def test_the_teacher_sees_the_ema_of_the_previous_step_exactly():
  config = _config(32, 1, learning_rate=0.1)
  config.ema_decay = 0.8
  make_batch, steps_per_epoch = _cluster_data(32)
  run = loop.setup(_ema_teacher_task(probe=True), config, _train_data(make_batch, steps_per_epoch),
                   mesh=mesh_lib.make_mesh(jax.devices()[:1]))
  state, trainer = run.state, run.trainer
  initial = jax.device_get(state.params)
  for step in range(4):
    before = jax.device_get({"params": state.ema_params, "batch_stats": state.batch_stats})
    if step == 0:   # the EMA starts as a copy of the parameters
      assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before["params"]),
                                                      jax.tree.leaves(initial)))
    state, metrics = trainer.train_step(state, mesh_lib.global_batch(make_batch(step),
                                                                     trainer.mesh))
    seen = jax.device_get(metrics["seen"])
    assert jax.tree.structure(seen) == jax.tree.structure(before)
    for a, b in zip(jax.tree.leaves(seen), jax.tree.leaves(before)):
      assert a.tobytes() == b.tobytes()   # bit for bit: the state before this step's update
    after = jax.device_get(state.ema_params)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after),
                                                        jax.tree.leaves(before["params"])))


def test_kd_against_an_ema_teacher_trains_through_fit(tmp_path):
  config = _config(32, 4, learning_rate=0.1)
  config.ema_decay = 0.9
  make_batch, steps_per_epoch = _cluster_data(32)
  x_val, y_val = _clusters(128, 1)
  result = loop.fit(_ema_teacher_task(probe=False), config, str(tmp_path / "ema_kd"),
                    _train_data(make_batch, steps_per_epoch),
                    evaluate=_accuracy_evaluator(x_val, y_val, 32),
                    mesh=mesh_lib.make_mesh(jax.devices()[:1]))
  assert result.last_eval["validation/accuracy"] > 0.6   # chance: 0.25
  train = [r for r in _jsonl(str(tmp_path / "ema_kd")) if "train/kd" in r]
  assert len(train) == 4 * steps_per_epoch
  # The teacher (eval mode: running BatchNorm statistics) and the student (batch statistics)
  # disagree, so KD pulls; it stays small as both converge.
  assert all(np.isfinite(r["train/kd"]) and r["train/kd"] > 0 for r in train)
  assert train[-1]["train/ce"] < train[0]["train/ce"]


def test_an_ema_teacher_needs_an_ema():
  task = _ema_teacher_task(probe=False)
  with pytest.raises(ValueError, match=r"config\.ema_decay"):
    loop.Trainer(task, None, mesh_lib.make_mesh(jax.devices()[:1]), ema_decay=0.0)
  import dataclasses
  with pytest.raises(ValueError, match="already has a key 'ema'"):
    loop.Trainer(dataclasses.replace(task, frozen_variables={"ema": 1}), None,
                 mesh_lib.make_mesh(jax.devices()[:1]), ema_decay=0.9)


# ----------------------------------------------------------------------------- the room's rules
def test_the_train_room_imports_no_losses_stages_data_or_tasks():
  """…nor names a model's random stream, a model's keyword or a data column in its code."""
  folder = os.path.join(REPO, "jax_asc", "train")
  forbidden = ("jax_asc.losses", "jax_asc.stages", "jax_asc.data", "jax_asc.tasks",
               "jax_asc.teachers", "jax_asc.models")
  words = ("dropout", "patchout", "return_features", "waveform", "recording_device", "label")
  for name in sorted(os.listdir(folder)):
    if not name.endswith(".py"):
      continue
    tree = ast.parse(open(os.path.join(folder, name)).read())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
      if (isinstance(node, ast.Constant) and isinstance(node.value, str)
          and id(node) not in docstrings):
        assert not any(w in node.value for w in words), f"jax_asc/train/{name}: {node.value!r}"
      modules = []
      if isinstance(node, ast.Import):
        modules = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module:
        modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
      for module in modules:
        assert not module.startswith(forbidden), f"jax_asc/train/{name} imports {module}"


def test_loop_names_stay_importable():
  assert loop.Task is step_lib.Task and loop.Prepared is step_lib.Prepared
  assert loop.StepContext is step_lib.StepContext


def test_parameter_groups_with_an_ema_teacher_resume_bit_exactly(tmp_path):
  """Frozen and re-weighted groups, accumulation and an EMA teacher: the optimizer state of the
  groups (partitions, MaskedNodes) goes through orbax and a resumed run ends as an
  uninterrupted one."""
  def run(workdir, hooks=()):
    config = _config(32, 2, learning_rate=0.1)
    config.optimizer.update(name="adam", weight_decay=0.01, grad_accum_steps=2,
                            param_groups=(("Dense_0/.*", {"frozen": True}),
                                          ("Dense_1/bias", {"lr_mult": 0.5})))
    config.ema_decay = 0.9
    config.checkpoint.every_steps = 3
    make_batch, steps_per_epoch = _cluster_data(32)
    return loop.fit(_ema_teacher_task(probe=False), config, str(tmp_path / workdir),
                    _train_data(make_batch, steps_per_epoch), hooks=hooks,
                    mesh=mesh_lib.make_mesh(jax.devices()[:1])).state

  class Crash(Exception):
    pass

  def crash_at_7(step, state):
    if step == 7:
      raise Crash()

  uninterrupted = jax.device_get(run("a"))
  with pytest.raises(Crash):
    run("b", [crash_at_7])
  resumed = jax.device_get(run("b"))
  assert jax.tree.structure(resumed.opt_state) == jax.tree.structure(uninterrupted.opt_state)
  for part in ("params", "batch_stats", "opt_state", "ema_params"):
    for a, b in zip(jax.tree.leaves(getattr(resumed, part)),
                    jax.tree.leaves(getattr(uninterrupted, part))):
      assert a.tobytes() == b.tobytes(), part
