"""Named teachers (jax_asc/teachers): the in-graph resampler, online teachers with their own
sample rate, dtype and sharding, and a student trained from three teachers at once (a cache
ensemble, an online model in bfloat16 and its own EMA) that is evaluated after its teachers are
gone."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cpu_devices
from configs import common as configs_common
from jax_asc import main as main_lib
from jax_asc.audio import frontends
from jax_asc.audio import resample as resample_lib
from jax_asc.data import audio_io
from jax_asc.teachers import online

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("source,target", [(32000, 16000), (44100, 32000), (16000, 32000),
                                           (32000, 22050)])
def test_in_graph_resampler_equals_the_numpy_one(source, target):
  x = np.random.default_rng(0).standard_normal((2, 3, source // 10)).astype(np.float32)
  ours = jax.jit(lambda x: resample_lib.resample(x, source, target))(jnp.asarray(x))
  reference = audio_io.sinc_resample(x, source, target)
  assert ours.shape == reference.shape == (2, 3, resample_lib.output_length(x.shape[-1], source,
                                                                           target))
  np.testing.assert_allclose(np.asarray(ours), reference, atol=2e-6)


def test_in_graph_resampler_passes_a_tone_and_removes_what_the_target_cannot_hold():
  t = np.arange(32000) / 32000
  low, high = np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 12000 * t)
  out = np.asarray(resample_lib.resample(jnp.asarray(np.stack([low, high]), jnp.float32),
                                         32000, 16000))
  interior = slice(100, -100)
  np.testing.assert_allclose(out[0, interior], np.sin(2 * np.pi * 1000 * t[::2])[interior],
                             atol=1e-3)
  # 12 kHz is above the 8 kHz Nyquist: attenuated by more than 50 dB (this kernel's stop band,
  # torchaudio's too: 1.8e-3 here)
  assert np.abs(out[1, interior]).max() < 10 ** (-50 / 20)


def _fake_run(workdir, *, sample_rate=16000, seed=0, base_channels=8):
  """A teacher run as its train stage leaves it (config.json and a checkpoint), here at another
  sample rate than the student's data: a CP-ResNet (tiny by default) with initial weights."""
  from jax_asc import models
  from jax_asc.train import checkpoint as checkpoint_lib
  from jax_asc.train import state as state_lib
  import optax
  config = configs_common.base_config()
  config.model = configs_common.cp_resnet(base_channels=base_channels, cut_channels_s3=4,
                                          n_blocks=(1, 1, 1), maxpool_positions_s1=(0, 1))
  config.frontend = configs_common.frontend("cp_resnet", sample_rate=sample_rate, n_mels=32,
                                            n_fft=512, win_length=400, hop_length=400)
  config.data.sample_rate = sample_rate
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort())
  settings = frontends.settings_from_config(config.frontend)
  model = models.build(config.model, n_classes=10)
  x = jnp.zeros((1, settings.n_mels, settings.num_frames(sample_rate)))
  variables = model.init(jax.random.key(seed), x, train=False)
  # non-trivial running statistics, so eval mode differs from batch statistics
  variables = {"params": variables["params"], "batch_stats": jax.tree.map(
      lambda v: v + 0.1, variables["batch_stats"])}
  state = state_lib.create(variables, optax.sgd(0.1), jax.random.PRNGKey(1), ema=False)
  metric = config.checkpoint.best_metric
  ckpt = checkpoint_lib.Checkpoints(workdir, best_metric=metric, best_mode="max", keep_best=1)
  ckpt.save_latest(0, state, {"step": 0})
  ckpt.save_best(0, state, {"step": 0}, {metric: 1.0})
  ckpt.wait()
  ckpt.close()
  return config


def test_an_online_teacher_hears_at_its_own_rate_through_its_own_frontend(tmp_path):
  run = str(tmp_path / "teacher16k")
  config = _fake_run(run)
  spec = configs_common.online_teacher(run=run)
  teacher = online.load("t", spec, n_classes=10)
  assert teacher.sample_rate == 16000 and teacher.frontend.n_mels == 32
  waves = np.random.default_rng(0).standard_normal((2, 32000)).astype(np.float32) * 0.1
  ours = jax.jit(lambda w: teacher.inputs(w, 32000))(jnp.asarray(waves))
  # The reference: resample on the host (NumPy), then the teacher's frontend.
  settings = frontends.settings_from_config(config.frontend)
  reference = frontends.log_mel(jnp.asarray(audio_io.sinc_resample(waves, 32000, 16000)),
                                settings)
  assert ours.shape == reference.shape == (2, 32, teacher.num_frames(32000, 32000))
  np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), atol=1e-4)
  full = teacher.apply(teacher.variables, ours, return_features=True)
  assert full["logits"].shape == (2, 10) and np.all(np.isfinite(full["logits"]))
  # bfloat16 weights: half the memory, the same feature maps to bfloat16 precision.
  half = online.load("t", configs_common.online_teacher(run=run, dtype="bfloat16"), 10)
  assert all(v.dtype == jnp.bfloat16 for v in jax.tree.leaves(half.variables))
  half_out = half.apply(half.variables, half.inputs(jnp.asarray(waves), 32000),
                        return_features=True)
  for stage in ("s1", "s2", "s3"):
    assert half_out[stage].dtype == jnp.bfloat16
    scale = float(jnp.abs(full[stage]).max())
    assert scale > 0
    np.testing.assert_allclose(np.asarray(half_out[stage], np.float32),
                               np.asarray(full[stage]), atol=0.05 * scale)
  with pytest.raises(ValueError, match=r"teachers.t.dtype must be one of \['bfloat16', "
                                       r"'float16', 'float32'\], got 'int8'"):
    online.load("t", configs_common.online_teacher(run=run, dtype="int8"), 10)
  with pytest.raises(ValueError, match=r"teachers.t.sharding must be one of"):
    online.load("t", configs_common.online_teacher(run=run, sharding="fsdp"), 10)
  with pytest.raises(FileNotFoundError, match="no 'soup' checkpoint"):
    online.load("t", configs_common.online_teacher(run=run, checkpoint="soup"), 10)


SPLIT_SCRIPT = r"""
import os, sys
# 8 CPU devices (tests/cpu_devices.py).
import jax, numpy as np
sys.path.insert(0, {repo!r})
from configs import common as configs_common, quickstart
from jax_asc.stages import common
from jax_asc.train import loop, mesh as mesh_lib
assert jax.device_count() == 8
out = {{}}
for sharding in ("replicated", "split"):
  config = quickstart.get_config("tiny")
  config.data.cache_dir = {cache!r}
  config.schedule.name = "constant"
  config.teachers.online = configs_common.online_teacher(run={run!r}, sharding=sharding)
  config.loss.terms.update(ssfm=1.0, cka=0.5)
  config.loss.ssfm.stages = "s2:s2"
  split, task = common.training_task(config, common.load_splits(config, "train")["train"])
  data = common.train_data(config, split, task.columns)
  run = loop.setup(task, config, data, mesh=mesh_lib.make_mesh())
  frozen = run.trainer._frozen["online"]
  specs = [leaf.sharding.spec for leaf in jax.tree.leaves(frozen)]
  sizes = [leaf.addressable_shards[0].data.size / leaf.size for leaf in jax.tree.leaves(frozen)]
  state, metrics = run.trainer.train_step(run.state,
                                          mesh_lib.global_batch(next(data.batches(0)),
                                                                run.trainer.mesh))
  out[sharding] = dict(loss=float(metrics["loss"]), ssfm=float(metrics["ssfm"]),
                       split_leaves=sum(1 for s in specs if "data" in tuple(s)),
                       smallest_share=min(sizes))
print("RESULT", out)
"""


def test_a_teacher_split_over_8_devices_gives_the_replicated_teachers_step(tmp_path, data_dir):
  """`sharding: split`: each device holds 1/8 of the teacher's large weights (FSDP-style) and
  the step's loss is the replicated teacher's."""
  run = str(tmp_path / "teacher")
  _fake_run(run, sample_rate=32000, base_channels=24)   # 3×3×48×48 kernels: split
  script = SPLIT_SCRIPT.format(repo=REPO, cache=data_dir, run=run)
  out = eval(cpu_devices.run_script(script).split("RESULT", 1)[1])
  replicated, split = out["replicated"], out["split"]
  assert replicated["split_leaves"] == 0 and replicated["smallest_share"] == 1.0
  assert split["split_leaves"] >= 1 and split["smallest_share"] == 1 / 8
  assert split["loss"] == pytest.approx(replicated["loss"], rel=1e-5)
  assert split["ssfm"] == pytest.approx(replicated["ssfm"], rel=1e-5)


def test_a_student_of_three_teachers_at_once_then_evaluated_without_them(tiny_config, tmp_path):
  """Cache (a teacher's predicted logits), online (the same teacher frozen in bfloat16, its
  feature maps) and EMA teachers in one run: each term reads its own teacher, all three are
  computed in the step, and the finished student evaluates and predicts after the teacher's
  folder has moved away."""
  teacher_dir = str(tmp_path / "teacher")
  teacher = tiny_config.copy_and_resolve_references()
  teacher.stage = "train,predict"
  teacher.num_epochs = 1
  teacher.predict.update(splits="train,test", checkpoint="latest")
  main_lib.run(teacher, teacher_dir)
  cached = np.load(os.path.join(teacher_dir, "predictions", "train", "logits.npy"))
  assert cached.shape == (64, 10)

  student = tiny_config.copy_and_resolve_references()
  student.stage = "ensemble,distill,evaluate,predict"
  student.teachers.cached = configs_common.cache_teacher(runs=teacher_dir)
  student.teachers.frozen = configs_common.online_teacher(run=teacher_dir, checkpoint="latest",
                                                          dtype="bfloat16")
  student.teachers.mean = configs_common.ema_teacher(decay=0.9)
  student.loss.terms.update(ce=0.5, kd=0.5, ssfm=0.1, cosine=0.1)
  student.loss.kd.teacher = "cached"
  student.loss.ssfm.update(teacher="frozen", stages="s1:s1,s3:s3")
  student.loss.cosine.teacher = "mean"
  student.predict.update(splits="test", outputs="logits,embedding", checkpoint="latest")
  student_dir = str(tmp_path / "student")
  results = main_lib.run(student, student_dir)
  rows = [json.loads(line) for line in open(os.path.join(student_dir, "metrics.jsonl"))]
  logged = [r for r in rows if "train/kd" in r]
  assert logged and all(np.isfinite(r["train/kd"]) and np.isfinite(r["train/ssfm"]) and
                        np.isfinite(r["train/cosine"]) for r in logged)
  assert results["ensemble"]["cached"]["members"] == 1
  embedding = np.load(os.path.join(student_dir, "predictions", "test", "embedding.npy"))
  filenames = np.load(os.path.join(student_dir, "predictions", "test", "filenames.npy"))
  assert embedding.shape[0] == len(filenames) == 36 and embedding.ndim == 2

  shutil.move(teacher_dir, str(tmp_path / "moved"))
  again = student.copy_and_resolve_references()
  again.stage = "evaluate,predict"
  results = main_lib.run(again, student_dir)
  assert 0.0 <= results["evaluate"]["accuracy"] <= 1.0
  np.testing.assert_array_equal(
      np.load(os.path.join(student_dir, "predictions", "test", "embedding.npy")), embedding)
