"""The trainer: sharding, resume bit-exactness, non-finite loss, config errors, quickstart."""
import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cpu_devices
from jax_asc import main as main_lib, native
from jax_asc.data import pipeline
from jax_asc.stages import common
from jax_asc.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_split(config):
  return common.load_splits(config, "train")["train"]


def _leaves_equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_resume_after_kill_9_is_bit_exact(tiny_config, tmp_path):
  """A run killed with SIGKILL (possibly while orbax writes a checkpoint) and started again with
  the same command ends with exactly the parameters, statistics and EMA of an uninterrupted
  run."""
  import signal
  import time
  from jax_asc.train import checkpoint as checkpoint_lib
  settings = dict(num_epochs=8, eval_every_epochs=8, ema_decay=0.9)   # 32 steps
  workdir = tmp_path / "killed"
  command = [sys.executable, "-m", "jax_asc.main", "--config", "configs/quickstart.py:tiny",
             "--workdir", str(workdir), "--config.stage=train",
             "--config.checkpoint.every_steps=4",
             f"--config.data.cache_dir={tiny_config.data.cache_dir}"] + [
                 f"--config.{k}={v}" for k, v in settings.items()]
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  latest = workdir / "checkpoints" / "latest"
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    if latest.is_dir() and any(n.isdigit() and int(n) >= 8 for n in os.listdir(latest)):
      break
    time.sleep(0.01)
  process.send_signal(signal.SIGKILL)
  assert process.wait() == -signal.SIGKILL           # killed mid-run, not finished
  assert not (workdir / "train.done.json").exists()
  again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  resumed_from = int(again.stdout.split("Resuming from the checkpoint at step ")[1].split()[0])
  assert 8 <= resumed_from < 32   # continued from a checkpoint, not from scratch

  config = tiny_config
  config.update(settings)
  config.checkpoint.every_steps = 4
  split, task = common.training_task(config, _train_split(config))
  uninterrupted = loop.fit(task, config, str(tmp_path / "whole"),
                           common.train_data(config, split)).state
  checkpoints = checkpoint_lib.Checkpoints(str(workdir), best_metric="x", best_mode="max",
                                           keep_best=0)
  resumed, meta = checkpoints.restore(uninterrupted, "latest")
  checkpoints.close()
  assert meta["step"] == int(uninterrupted.step) == 32
  for part in ("params", "batch_stats", "opt_state", "ema_params"):
    assert _leaves_equal(getattr(resumed, part), getattr(uninterrupted, part)), part


def test_non_finite_loss_names_the_step_and_keeps_the_last_checkpoint(tiny_config, tmp_path):
  config = tiny_config
  config.checkpoint.every_steps = 1
  split, base = common.training_task(config, _train_split(config))
  poisoned_index = 5

  def loss(logits, batch, ctx):
    value, metrics, loss_state = base.loss(logits, batch, ctx)
    poisoned = jnp.any(batch["index"] == poisoned_index)
    return jnp.where(poisoned, jnp.nan, value), metrics, loss_state

  task = dataclasses.replace(base, loss=loss)
  order = pipeline.epoch_permutation(len(split), config.seed, 0)
  bad_step = int(np.flatnonzero(order == poisoned_index)[0]) // config.batch_size + 1
  workdir = str(tmp_path / "nan")
  with pytest.raises(FloatingPointError, match=f"non-finite loss at step {bad_step}"):
    loop.fit(task, config, workdir, common.train_data(config, split))
  latest = os.listdir(os.path.join(workdir, "checkpoints", "latest"))
  assert latest == ([str(bad_step - 1)] if bad_step > 1 else [])


def test_loss_state_is_threaded_through_steps_and_checkpointed(tiny_config, tmp_path):
  from jax_asc.losses import contrastive
  from jax_asc.train import checkpoint as checkpoint_lib
  config = tiny_config
  split, base = common.training_task(config, _train_split(config))
  teacher_table = jax.random.normal(jax.random.key(9), (len(split), 10))

  def loss(logits, batch, ctx):
    ce, metrics, _ = base.loss(logits, batch, ctx._replace(loss_state=None))
    index, memory = batch["index"], ctx.loss_state
    contrast = contrastive.sample_contrast_indices(ctx.key, index, len(split), 8)
    crd, memory = contrastive.crd_loss(memory, logits, teacher_table[index], index, contrast)
    return ce + 0.1 * crd, dict(metrics, crd=crd), memory

  task = dataclasses.replace(
      base, loss=loss,
      init_loss_state=lambda key: contrastive.crd_memory_init(key, len(split), 10))
  workdir = str(tmp_path / "crd")
  result = loop.fit(task, config, workdir, common.train_data(config, split))
  initial = loop.setup(task, config, common.train_data(config, split)).state.loss_state
  final = result.state.loss_state
  assert float(final.z_student) > 0 and float(initial.z_student) < 0   # Z set on the first step
  assert not np.allclose(np.asarray(final.student), np.asarray(initial.student))
  ckpt = checkpoint_lib.Checkpoints(workdir, best_metric="x", best_mode="max", keep_best=0)
  restored, _ = ckpt.restore(result.state, "latest")
  ckpt.close()
  assert _leaves_equal(restored.loss_state, final)


def test_config_typo_is_an_error_naming_the_valid_key(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "jax_asc.main", "--config", "configs/quickstart.py:tiny",
       "--workdir", str(tmp_path), "--config.optimizer.learnig_rate=0.1"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "learnig_rate" in result.stderr and "learning_rate" in result.stderr


def test_unknown_stage_is_an_error(tiny_config, tmp_path):
  tiny_config.stage = "train,distil"
  with pytest.raises(ValueError, match="distil"):
    main_lib.run(tiny_config, str(tmp_path))


def test_quickstart_tiny_end_to_end(tiny_config, tmp_path, capsys):
  workdir = str(tmp_path / "qs")
  results = main_lib.run(tiny_config, workdir)
  out = capsys.readouterr().out
  assert "epoch 2/2" in out and "| a |" in out and "DCASE limits" in out
  for name in ("config.json", "metrics.jsonl", "train.done.json", "evaluate.done.json",
               "reports/test.json", "reports/test.md", "reports/test_confusion.png",
               "reports/complexity.md", "reports/complexity.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["batch_size"] == tiny_config.batch_size
  with open(os.path.join(workdir, "reports", "test.json")) as f:
    report = json.load(f)
  assert report["count"] == 36 and sum(map(sum, report["confusion"])) == 36
  assert results["evaluate"]["accuracy"] == report["accuracy"]
  assert "jax_asc: CPU kernels: " in out   # the choice, printed at start
  with open(os.path.join(workdir, "train.done.json")) as f:
    done = json.load(f)
  memory = done["outputs"]["memory"]
  # Which form ran is recorded with the run (jax_asc/native.describe()).
  assert done["cpu_kernels"]["kernels"] == native.describe()["kernels"]
  assert done["cpu_kernels"]["requested"] == "auto" and done["cpu_kernels"]["reason"]
  if done["cpu_kernels"]["kernels"] == "native":
    assert len(done["cpu_kernels"]["library_hash"]) == 16 and done["cpu_kernels"]["target"]
  state = 4 * 3 * results["train"]["params"] / 2**20   # params + Adam's two moments, float32
  assert state < memory["train_state_mb"] < state + 0.05   # + batch stats, counts, key
  assert memory["peak_host_mb"] > 100
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert any("validation/macro_accuracy" in r for r in rows)
  assert any("train/loss" in r for r in rows)
  # Evaluating the best checkpoint instead is one flag away.
  tiny_config.stage = "evaluate"
  tiny_config.evaluate.checkpoint = "best"
  assert main_lib.run(tiny_config, workdir)["evaluate"]["checkpoint"]["which"] == "best"


SHARDED_SCRIPT = r"""
import os, sys
# 8 CPU devices (tests/cpu_devices.py).
import jax, numpy as np
sys.path.insert(0, {repo!r})
from configs import quickstart
from jax_asc.stages import common
from jax_asc.train import loop, mesh as mesh_lib
assert jax.device_count() == 8
config = quickstart.get_config("tiny")
config.data.cache_dir = {cache!r}
config.schedule.name = "constant"
# Centre the log-mels (about -10 unnormalised): BatchNorm makes the stem's output gradients sum
# to zero up to rounding, and the stem kernel's gradient multiplies that rounding by the input
# mean, so an uncentred input turns reduction-order noise into visible gradient differences.
config.frontend.update(norm_shift=10.0, norm_scale=4.0)
split, task = common.training_task(config, common.load_splits(config, "train")["train"])
data = common.train_data(config, split)
local = next(data.batches(0))
out = {{}}
for name, devices in (("one", jax.devices()[:1]), ("eight", jax.devices())):
  run = loop.setup(task, config, data, mesh=mesh_lib.make_mesh(devices))
  initial = jax.device_get(run.state.params)   # the step donates the state's buffers
  state, metrics = run.trainer.train_step(run.state, mesh_lib.global_batch(local, run.trainer.mesh))
  out[name] = (float(metrics["loss"]), jax.device_get(state.batch_stats),
               jax.device_get(state.params), initial)

def rel(a, b):
  return max(float(np.linalg.norm(x - y) / (np.linalg.norm(y) + 1e-12))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

one, eight = out["one"], out["eight"]
update = lambda o: jax.tree.map(lambda p, p0: p - np.asarray(p0), o[2], o[3])
print("RESULT", dict(loss=abs(one[0] - eight[0]) / one[0], batch_stats=rel(one[1], eight[1]),
                     update=rel(update(one), update(eight))))
"""


def test_sharded_step_on_8_devices_equals_single_device(tiny_config, tmp_path):
  common.load_splits(tiny_config, "train")   # build the cache once, here
  script = SHARDED_SCRIPT.format(repo=REPO, cache=tiny_config.data.cache_dir)
  diff = eval(cpu_devices.run_script(script).split("RESULT", 1)[1])
  # Loss and BatchNorm statistics see the global batch (per-device statistics over 2 examples
  # would differ at O(1)).
  assert diff["loss"] < 1e-6 and diff["batch_stats"] < 1e-5, diff
  # The first update (Adam) agrees to float tolerance. Gradients of this tiny network are
  # ill-conditioned (see the input centring in the script): reduction order over 8 devices
  # perturbs them; Adam's first step is lr·sign(g) wherever |g| ≫ eps, so the update is what
  # can be compared tightly.
  assert diff["update"] < 1e-3, diff
