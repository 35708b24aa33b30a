"""The loss-term registry (jax_asc/losses/registry.py) and the classification task's use of it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common as configs_common
from jax_asc.losses import classification, distillation, pit, registry
from jax_asc import tasks
from jax_asc.tasks import classification as classification_task


def _inputs(seed=0, b=8, c=5):
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.normal(size=(b, c)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, c, b), jnp.int32)
  teacher = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(b, c)), jnp.float32) / 2.0)
  return {"logits": logits, "targets": labels, "labels": labels,
          "target_probs": jax.nn.one_hot(labels, c),
          "embedding": jnp.asarray(rng.normal(size=(b, 16)), jnp.float32),
          "teachers": {"ensemble": {"log_probs": teacher}}}


def test_weighted_sum_equals_the_terms_computed_directly():
  inputs = _inputs()
  settings = registry.default_settings()
  settings["kd"].update(temperature=2.0, reduction="elementwise_mean")
  loss, metrics, states = registry.total({"ce": 0.02, "kd": 0.98, "supcon": 0.0}, settings,
                                         inputs)
  ce = classification.cross_entropy(inputs["logits"], inputs["labels"])
  kd = distillation.kd_from_log_probs(inputs["logits"], inputs["teachers"]["ensemble"]
                                      ["log_probs"], 2.0, reduction="elementwise_mean")
  np.testing.assert_allclose(float(loss), 0.02 * float(ce) + 0.98 * float(kd), rtol=1e-6)
  assert set(metrics) == {"ce", "kd"} and states == {}   # weight 0: not computed


def test_unknown_term_lists_the_registered_ones():
  with pytest.raises(KeyError, match=r"unknown term\(s\) \['kdd'\].*'ce'.*'crd'"):
    registry.active({"kdd": 1.0})


def test_missing_inputs_and_teachers_are_named():
  settings = registry.default_settings()
  with pytest.raises(ValueError, match="'pit_ce' needs input 'track_logits'.*classification"):
    registry.check_inputs({"pit_ce": 1.0}, settings, {"logits"}, {}, "classification")
  with pytest.raises(ValueError, match="reads teacher 'ensemble'.*none"):
    registry.check_inputs({"kd": 1.0}, settings, {"logits"}, {}, "classification")
  with pytest.raises(ValueError, match="reads 'track_logits' of teacher 'ema'"):
    registry.check_inputs({"pi_kd": 1.0}, settings, {"track_logits"},
                          {"ema": ("logits",)}, "tagging")


def test_pit_terms_are_permutation_invariant():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(4, 3, 6)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 6, (4, 3)), jnp.int32)
  perm = jnp.array([2, 0, 1])
  settings = registry.default_settings()
  base = {"track_logits": logits, "track_targets": targets, "step": jnp.asarray(0),
          "teachers": {"ema": {"track_logits": logits * 0.5}}}
  swapped = dict(base, track_targets=targets[:, perm],
                 teachers={"ema": {"track_logits": logits[:, perm] * 0.5}})
  for name in ("pit_ce", "pi_kd"):
    a = registry.total({name: 1.0}, settings, base)[0]
    b = registry.total({name: 1.0}, settings, swapped)[0]
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
  np.testing.assert_allclose(float(registry.total({"pit_ce": 1.0}, settings, base)[0]),
                             float(pit.pit_cross_entropy(logits, targets)[0]), rtol=1e-6)


def test_crd_threads_its_memory_state():
  settings = registry.default_settings()
  settings["crd"].update(feat_dim=8, num_negatives=16)
  states = registry.init_states(jax.random.key(0), {"crd": 1.0}, settings, {"num_examples": 32})
  rng = np.random.default_rng(2)
  inputs = {"projected": jnp.asarray(rng.normal(size=(4, 8)), jnp.float32),
            "index": jnp.arange(4), "crd_key": jax.random.key(1),
            "teachers": {"online": {"projected": jnp.asarray(rng.normal(size=(4, 8)),
                                                             jnp.float32)}}}
  loss, _, new = registry.total({"crd": 1.0}, settings, inputs, states)
  assert np.isfinite(float(loss))
  assert not np.allclose(new["crd"].student[:4], states["crd"].student[:4])
  np.testing.assert_array_equal(new["crd"].student[4:], states["crd"].student[4:])


def test_config_lists_every_registered_term_and_its_settings():
  config = configs_common.base_config()
  assert set(config.loss.terms) == set(registry.TERMS)
  assert config.loss.terms.ce == 1.0 and config.loss.kd.temperature == 2.0
  config.lock()
  with pytest.raises(AttributeError, match="crd"):   # a typo names the valid keys
    config.loss.terms.crdd = 1.0
  settings = classification_task.loss_settings(config)
  assert settings["ssfm"]["stages"] == "s3:s3"


def test_evaluation_needs_no_teacher_run(tmp_path):
  """A DFM/SSFM/KD student's evaluation task builds without its teachers (moved folders)."""
  from jax_asc.data.dataset import Split
  config = configs_common.base_config()
  config.model.update(base_channels=8, n_blocks=(1, 1, 1), strides=((1, 1), (2, 1), (1, 2)))
  config.loss.terms.update(kd=1.0, dfm=0.1, ssfm=0.1)
  config.teachers.ensemble = configs_common.cache_teacher(runs=str(tmp_path / "gone"))
  config.teachers.online = configs_common.online_teacher(run=str(tmp_path / "moved_away"))
  n = 2
  split = Split(name="test", columns=dict(
      waveform=np.zeros((n, 1, 32000), np.float32), label=np.zeros(n, np.int32),
      recording_device=np.zeros(n, np.int32), filename=np.asarray(["a.wav", "b.wav"]),
      index=np.arange(n, dtype=np.int32)), classes=[f"c{i}" for i in range(10)],
      devices=["a"], sample_rate=32000)
  task = tasks.build(config, split, need_teachers=False, outputs=("logits", "embedding"))
  assert task.teacher is None and task.frozen_variables is None
  x = task.make_inputs(None, {"waveform": jnp.zeros((n, 1, 32000))})
  variables = task.model.init(jax.random.key(0), x, **task.apply_kwargs)
  outputs = task.outputs(task.apply(variables, x), {})
  assert outputs["logits"].shape == (n, 10) and outputs["embedding"].shape[0] == n
  with pytest.raises(FileNotFoundError, match="moved_away"):   # training does need them
    tasks.build(config, split)
  with pytest.raises(FileNotFoundError, match="gone"):
    classification_task.join_cache_teachers(config, split, str(tmp_path / "run"))


def test_kd_from_the_students_own_ema_trains_the_classification_task(tiny_config, tmp_path):
  """`loss.kd.teacher = "ema"`: the classification task distils from its own EMA (report 004's
  EMA teacher, by config); without an EMA it is an error naming config.ema_decay."""
  from jax_asc.stages import common
  from jax_asc.train import loop
  config = tiny_config
  config.loss.terms.update(ce=0.5, kd=0.5)
  config.loss.kd.teacher = "mean_teacher"
  split = common.load_splits(config, "train")["train"]
  with pytest.raises(ValueError, match=r"reads teacher 'mean_teacher' \(config.loss.kd.teacher\)"
                                       r"; this run's teachers \(config.teachers\): none"):
    tasks.build(config, split)
  config.teachers.mean_teacher = configs_common.ema_teacher(decay=0.9)
  config.ema_decay = 0.5
  with pytest.raises(ValueError, match="config.ema_decay=0.5 differs from teachers.mean_teacher"):
    tasks.build(config, split)
  config.ema_decay = 0.0
  task = tasks.build(config, split)
  assert task.ema_teacher and task.teacher is not None and task.ema_decay == 0.9
  result = loop.fit(task, config, str(tmp_path / "ema_kd"), common.train_data(config, split))
  assert int(result.state.step) == config.num_epochs * result.steps_per_epoch
  assert result.trainer.ema_decay == 0.9 and result.state.ema_params is not None
  assert tasks.build(config, split, need_teachers=False).teacher is None   # none to evaluate


def test_teacher_terms_name_the_config_key_at_fault(tmp_path):
  """Each wrong pairing of a loss term and a teacher is an error at build time that names the
  config key, not a KeyError inside the jitted step."""
  from jax_asc.data.dataset import Split
  n = 2
  columns = dict(waveform=np.zeros((n, 1, 32000), np.float32), label=np.zeros(n, np.int32),
                 recording_device=np.zeros(n, np.int32), filename=np.asarray(["a.wav", "b.wav"]),
                 index=np.arange(n, dtype=np.int32))
  split = Split(name="train", columns=columns, classes=[f"c{i}" for i in range(10)],
                devices=["a"], sample_rate=32000)

  def config(**terms):
    c = configs_common.base_config()
    c.loss.terms.update(terms)
    c.teachers.beats = configs_common.cache_teacher(runs="x", output="embedding")
    return c

  kd = config(kd=1.0)
  kd.loss.kd.teacher = "beats"
  with pytest.raises(ValueError, match=r"reads 'log_probs' of teacher 'beats', which gives "
                                       r"\['embedding'\]"):
    tasks.build(kd, split, need_teachers=False)
  with pytest.raises(ValueError, match=r"'dfm' reads teacher 'online' \(config.loss.dfm.teacher"
                                       r"\); this run's teachers \(config.teachers\): "
                                       r"\['beats'\]"):
    tasks.build(config(dfm=0.1), split, need_teachers=False)
  ssfm = config(ssfm=0.1)
  ssfm.loss.ssfm.teacher = "beats"
  with pytest.raises(ValueError, match=r"'ssfm' needs an online teacher's feature maps; "
                                       r"config.loss.ssfm.teacher = 'beats' is a cache teacher"):
    tasks.build(ssfm, split, need_teachers=False)
  unlabelled = Split(name="eval", columns={k: v for k, v in columns.items() if k != "label"},
                     classes=split.classes, devices=split.devices, sample_rate=32000)
  with pytest.raises(ValueError, match=r"reads the column\(s\) \['label'\], which split 'eval'"):
    tasks.build(config(), unlabelled, need_teachers=False)
