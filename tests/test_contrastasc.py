"""Report 003 (ContrastASC) pieces: contrastive terms on the projection, the student's CRD head,
phase 1's clean view, mixup probability, 16-kHz synthetic scenes, warm-up in epochs, the report's
configs, plan and tables."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from configs import report003_contrastasc as report003
from jax_asc import data as data_lib
from jax_asc import models
from jax_asc.audio import frontends
from jax_asc.eval import tables
from jax_asc.losses import classification, contrastive, registry
from jax_asc.models import heads
from jax_asc.tasks import classification as classification_task
from jax_asc.train import optim
from jax_asc.train import step as step_lib


def test_contrastive_terms_read_the_projection_when_asked():
  rng = np.random.default_rng(0)
  targets = jax.nn.one_hot(jnp.asarray([0, 1, 0, 1, 2, 2]), 3)
  embedding = jnp.asarray(rng.normal(size=(6, 16)), jnp.float32)
  projected = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  settings = registry.default_settings()
  settings["soft_supcon"]["on"] = "projected"
  loss, metrics, _ = registry.total({"soft_supcon": 1.0}, settings, {
      "embedding": embedding, "projected": projected, "targets": targets})
  expected = contrastive.soft_supcon_loss(projected, targets, temperature=0.2)[0]
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  assert not np.isclose(loss, contrastive.soft_supcon_loss(embedding, targets)[0])
  with pytest.raises(ValueError, match="needs input 'projected'"):
    registry.check_inputs({"soft_supcon": 1.0}, settings, {"embedding", "targets"}, {}, "t")
  settings["supcon"]["on"] = "logits"
  with pytest.raises(ValueError, match=r"loss.supcon.on must be one of \['embedding', "
                                       r"'projected'\]"):
    registry.check_inputs({"supcon": 1.0}, settings, {"embedding", "labels"}, {}, "t")


def test_crd_softmax_is_eq3_with_the_teacher_as_anchor():
  rng = np.random.default_rng(2)
  student = rng.normal(size=(5, 8)).astype(np.float32)
  teacher = rng.normal(size=(5, 8)).astype(np.float32)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  s, t = unit(student), unit(teacher)
  expected = 0.0
  for i in range(5):   # −log e^{q·k⁺/τ} / (e^{q·k⁺/τ} + Σ_{k⁻} e^{q·k⁻/τ}), q = teacher i
    scores = np.exp(t[i] @ s.T / 0.07)
    expected -= np.log(scores[i] / scores.sum()) / 5
  loss, _, _ = registry.total({"crd_softmax": 1.0}, registry.default_settings(), {
      "projected": jnp.asarray(student), "teachers": {"online": {"projected": jnp.asarray(
          teacher)}}})
  np.testing.assert_allclose(loss, expected, rtol=1e-4)
  # Aligned pairs far apart from the rest cost almost nothing.
  basis = np.eye(5, 8, dtype=np.float32)
  aligned, _, _ = registry.total({"crd_softmax": 1.0}, registry.default_settings(), {
      "projected": jnp.asarray(basis), "teachers": {"online": {"projected": jnp.asarray(basis)}}})
  assert float(aligned) < 1e-4


def test_student_projection_head_wraps_the_model():
  student = models.build(common.cp_mobile_report003("6k"), n_classes=10)
  model = heads.WithProjection(student, features=128, hidden=0)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 32, 41)), jnp.float32)
  variables = model.init(jax.random.key(0), x)
  assert set(variables["params"]) == {"student", "projection"}
  out = model.apply(variables, x, return_features=True)
  width = out["embedding"].shape[-1]
  assert variables["params"]["projection"]["hidden"]["kernel"].shape == (width, width)
  assert out["projected"].shape == (3, 128)
  np.testing.assert_allclose(jnp.linalg.norm(out["projected"], axis=-1), 1.0, atol=1e-5)
  inner = student.apply({"params": variables["params"]["student"]}, x)
  np.testing.assert_allclose(model.apply(variables, x), inner, atol=1e-6)
  linear = heads.WithProjection(student, features=128, hidden=None)
  assert set(linear.init(jax.random.key(0), x)["params"]["projection"]) == {"out"}


def _tiny_split(tiny_config):
  return data_lib.load_splits(tiny_config.data, ["train"])["train"]


def _batch(split, n=8):
  return {"waveform": jnp.asarray(split["waveform"][:n], jnp.float32) * split.waveform_scale,
          "label": jnp.asarray(split["label"][:n]),
          "recording_device": jnp.asarray(split["recording_device"][:n]),
          "index": jnp.arange(n)}


def test_clean_view_feeds_ce_the_clean_clips_and_the_rest_the_augmented(tiny_config):
  config = tiny_config
  config.model.head = "cosine"
  config.loss.terms.update(ce=0.25, soft_supcon=0.75)
  config.loss.soft_supcon.on = "projected"
  config.mix.update(clean_view=True, mixstyle_p=1.0, mixstyle_alpha=0.4)
  split = _tiny_split(config)
  task = classification_task.build(config, split)
  batch = _batch(split)
  prepared = task.make_inputs(jax.random.key(3), batch)
  x = prepared.model_input
  clean = frontends.log_mel(classification_task.mono(batch["waveform"]),
                            frontends.settings_from_config(config.frontend))
  assert x.shape[0] == 16
  np.testing.assert_allclose(x[:8], clean, atol=1e-5)
  assert not np.allclose(x[8:], clean, atol=1e-3)        # MixStyle always on here
  assert task.make_inputs(None, batch).shape[0] == 8      # evaluation: one view
  # CE reads the clean half: logits right there, wrong on the augmented half.
  right = 10.0 * jax.nn.one_hot(batch["label"], 10)
  output = {"logits": jnp.concatenate([right, -right]),
            "projected": contrastive.l2_normalize(jnp.ones((16, 4)))}
  ctx = step_lib.StepContext(key=jax.random.key(0), loss_state={}, teachers={},
                             step=jnp.zeros((), jnp.int32))
  _, metrics, _ = task.loss(output, batch, ctx)
  expected = classification.cross_entropy(right, jax.nn.one_hot(batch["label"], 10))
  np.testing.assert_allclose(metrics["ce"], expected, rtol=1e-5)
  assert metrics["accuracy"] == 1.0
  config.teachers.online = common.online_teacher(run="/nowhere")
  config.loss.terms.kd = 0.5
  config.loss.kd.teacher = "online"
  with pytest.raises(ValueError, match="clean_view"):
    classification_task.build(config, split, need_teachers=False)


def test_mixup_probability_zero_leaves_the_input_unmixed(tiny_config):
  config = tiny_config
  config.augment.update(freq_mask=0, fmin_aug_range=1, fmax_aug_range=1)
  split = _tiny_split(config)
  batch = _batch(split)
  inputs = {}
  for p in (0.0, 1.0):
    config.mix.update(mixup_alpha=2.0, mixup_p=p)
    prepared = classification_task.build(config, split).make_inputs(jax.random.key(5), batch)
    inputs[p] = prepared
  clean = frontends.log_mel(classification_task.mono(batch["waveform"]),
                            frontends.settings_from_config(config.frontend))
  np.testing.assert_allclose(inputs[0.0].model_input, clean, atol=1e-4)   # banded mel path
  np.testing.assert_allclose(inputs[0.0].extras["mix_lam"], 1.0)
  assert np.any(np.asarray(inputs[1.0].extras["mix_lam"]) < 1)


def test_synthetic_scenes_resampled_to_16_khz(tiny_config):
  config = tiny_config
  at_32k = data_lib.load_splits(config.data, ["validation"])["validation"]
  config.data.sample_rate = 16000
  at_16k = data_lib.load_splits(config.data, ["validation"])["validation"]
  assert at_16k.sample_rate == 16000 and at_16k["waveform"].shape[-1] == 16000
  assert at_16k["waveform"].dtype == np.float32
  np.testing.assert_array_equal(at_16k["label"], at_32k["label"])
  # The band below 7 kHz keeps its energy (the resampler's passband).
  def band_energy(x, rate):
    spectrum = np.abs(np.fft.rfft(x, axis=-1)) ** 2
    freqs = np.fft.rfftfreq(x.shape[-1], 1 / rate)
    return spectrum[..., freqs < 7000].sum(-1) / x.shape[-1] ** 2
  low_32k = band_energy(at_32k["waveform"][:4, 0].astype(np.float32) * at_32k.waveform_scale,
                        32000)
  low_16k = band_energy(at_16k["waveform"][:4, 0], 16000)
  np.testing.assert_allclose(low_16k, low_32k, rtol=0.05)   # mean power


def test_cosine_warmup_in_epochs():
  cfg = ml_collections.ConfigDict(dict(name="warmup_cosine", warmup_steps=1000,
                                       cosine_warmup_epochs=2.0, end_factor=0.0))
  schedule = optim.make_schedule(cfg, 1.0, total_updates=100, updates_per_epoch=10)
  np.testing.assert_allclose([schedule(0), schedule(10), schedule(20)], [0.0, 0.5, 1.0],
                             atol=1e-6)
  assert schedule(99) < 0.01
  cfg.cosine_warmup_epochs = 0.0   # warmup_steps again (capped below the run's updates)
  assert float(optim.make_schedule(cfg, 1.0, 100, 10)(50)) == pytest.approx(50 / 99)


def test_report003_configs_follow_the_report():
  for role in report003.ROLES:
    for arg in (f"{role},smoke", f"{role},root=/data/tau22,beats=/w/BEATs.pt"):
      config = report003.get_config(arg)
      assert config.data.sample_rate == 16000
      assert config.stage == "train,evaluate,fewshot"
  phase1 = report003.get_config("cft_heads,root=/data,beats=/w/BEATs.pt")
  assert phase1.optimizer.param_groups == (("backbone/.*", {"frozen": True}),)
  assert (phase1.optimizer.learning_rate, phase1.optimizer.weight_decay,
          phase1.batch_size, phase1.num_epochs) == (8e-3, 1e-4, 2048, 50)
  assert phase1.mix.clean_view and phase1.model.head == "cosine"
  assert phase1.model.cosine_scale == 56.0
  assert (phase1.model_init.path, phase1.model_init.kind) == ("/w/BEATs.pt", "beats_torch")
  assert (phase1.loss.terms.ce, phase1.loss.terms.soft_supcon) == (0.25, 0.75)
  assert phase1.loss.soft_supcon.to_dict() == {"temperature": 0.2, "on": "projected"}
  assert (phase1.mix.mixup_p, phase1.mix.mixup_alpha, phase1.mix.mixstyle_p,
          phase1.mix.mixstyle_alpha) == (0.3, 2.0, 0.4, 0.4)
  assert (phase1.waveform_augment.roll_samples, phase1.augment.freq_mask) == (1600, 48)
  phase2 = report003.get_config("cft,root=/data")
  assert not phase2.mix.clean_view and phase2.optimizer.param_groups == ()
  assert (phase2.optimizer.learning_rate, phase2.num_epochs,
          phase2.schedule.cosine_warmup_epochs) == (1e-4, 30, 2.0)
  # CE-only FT: the network sees CE alone; its projection head learns beside it (stopped).
  ft = report003.get_config("ft,root=/data")
  assert ft.loss.terms.ce == 1.0 and ft.model.projection_stop_gradient
  assert report003.get_config("cft,root=/data").model.projection_stop_gradient is False
  probe = report003.get_config("frozen,root=/data,beats=/w/BEATs.pt")
  assert (probe.loss.terms.soft_supcon, probe.mix.mixup_alpha, probe.mix.mixstyle_p,
          probe.mix.clean_view, probe.augment.freq_mask) == (0, 0, 0, False, 0)
  assert report003.get_config("cft_linear,root=/data").model.head == "linear"
  student = report003.get_config("student_cft_crd,root=/data,dirs=/irs")
  terms = student.loss.terms
  assert (terms.ce, terms.kd, terms.crd_softmax, terms.crd) == (0.02, 0.98, 0.1, 0)
  assert (student.loss.kd.temperature, student.loss.kd.reduction,
          student.loss.crd_softmax.temperature, student.loss.crd.student_head) == (
              2.0, "elementwise_mean", 0.07, "mlp")
  assert student.waveform_augment.dir_prob == 0.6 and student.mix.mixup_alpha == 0
  # CP-Mobile's frontend halved at 16 kHz; the upper edge within 7000 ± 1000 Hz.
  assert (student.frontend.sample_rate, student.frontend.n_fft, student.frontend.win_length,
          student.frontend.hop_length, student.frontend.fmax) == (16000, 2048, 1536, 250, 7000)
  assert student.augment.fmax_aug_range == 2000
  assert (student.num_epochs, student.schedule.cosine_warmup_epochs) == (75, 7.0)
  assert student.fewshot.output == "embedding_prenorm"
  assert student.fewshot.datasets == "tut17,icme24"
  assert report003.get_config("student_nokd,root=/d,esc50=/e").fewshot.datasets == \
      "tut17,icme24,esc50"
  assert report003.get_config("student_ft_kd,root=/d").loss.terms.crd_softmax == 0
  assert report003.get_config("student_nokd,root=/d").loss.terms.kd == 0
  lrs = [report003.get_config(f"student_ft_kd,root=/d,size={s}").optimizer.learning_rate
         for s in report003.SIZES]
  assert lrs == [0.04, 0.04, 0.03, 0.02, 0.01]
  for role, norm in (("student_cft_crd_nonorm", "none"), ("student_cft_crd_batchnorm", "batch"),
                     ("student_cft_crd", "layer")):
    model = report003.get_config(f"{role},root=/d").model
    assert (model.norm, model.head_norm, model.head) == (norm, norm, "norm_cosine")
  with pytest.raises(ValueError, match="beats=<BEATs .pt>"):
    report003.get_config("frozen,root=/data")
  with pytest.raises(ValueError, match="size must be one of"):
    report003.get_config("student_ft_kd,smoke,size=7k")


def test_report003_plan_runs_every_table_row():
  plan = report003.get_plan()
  paths = [run.path for run in plan.runs]
  assert {f"teachers/{t}" for t in tables.REPORT003_TABLE1} <= set(paths)
  assert {f"students/{s}" for s in tables.REPORT003_TABLE2} <= set(paths)
  for size in report003.SIZES[:-1]:
    assert {f"students/student_ft_kd@{size}", f"students/student_cft_crd@{size}"} <= set(paths)
  by_path = {run.path: run for run in plan.runs}
  assert by_path["teachers/cft"].init_from.run == "teachers/cft_heads"
  assert by_path["students/student_ft_crd"].needs == ("teachers/ft",)
  assert by_path["students/student_cft_kd"].overrides == {
      "teachers.online.run": "{workdir}/teachers/cft"}
  assert by_path["students/student_nokd"].needs == ()
  assert plan.checkpoints == ("beats", "tut17", "icme24") and plan.optional == ("esc50",)
  smoke = [run.path for run in report003.get_plan(smoke=True).runs]
  assert len(smoke) == len(paths) - 2 * (len(report003.SIZES) - len(report003.SMOKE_SIZES))


def _write(path, payload):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f)


def _fewshot(accuracy, datasets=("tut17", "icme24")):
  group = lambda v: {"mean": v, "ci95": 0.01}
  return {"datasets": {d: {"map": accuracy / 2, "shots": {
      str(k): {"accuracy": group(accuracy + k / 1000), "seen": group(accuracy - 0.01),
               "unseen": group(accuracy + 0.01)} for k in (5, 20)}} for d in datasets}}


def test_report003_tables_put_the_reports_figures_beside_ours(tmp_path):
  root = str(tmp_path)
  for i, name in enumerate(tables.REPORT003_TABLE1):
    run = os.path.join(root, "teachers", name)
    _write(os.path.join(run, "config.json"), {"evaluate": {"split": "test"}, "data": {}})
    _write(os.path.join(run, "reports", "test.json"), {"accuracy": 0.5 + i / 100})
    _write(os.path.join(run, "reports", "fewshot.json"), _fewshot(0.4 + i / 100))
  names = list(tables.REPORT003_TABLE2) + ["student_ft_kd@6k", "student_cft_crd@6k"]
  for i, name in enumerate(names):
    run = os.path.join(root, "students", name)
    _write(os.path.join(run, "config.json"), {"evaluate": {"split": "test"}, "data": {}})
    _write(os.path.join(run, "reports", "test.json"),
           {"accuracy": 0.3 + i / 100, "params": 6000 if "@" in name else 126858})
    _write(os.path.join(run, "reports", "fewshot.json"), _fewshot(0.2 + i / 100))
  markdown = tables.write("report003", root)
  assert "| Contrastive FT | 52.00 (62.5) | 42.50 (62.3) | 44.00 (72.4) | 0.21 (0.58) |" in \
      markdown
  assert "| C-FT | CRD | 34.00 (60.6) | 24.50 (56.3) | 26.00 (66.5) | 24.50 (64.5) | " \
         "26.00 (77.7) |" in markdown
  assert "| C-FT + CRD | 23.00 (47.9) | 25.00 (59.6) | 23.00 (65.8) | 25.00 (64.3) |" in markdown
  assert "| 6k | 6,000 | 37.00 | 38.00 | 27.50 | 28.50 |" in markdown
  assert "| 126k | 126,858 | 31.00 | 34.00 | 21.50 | 24.50 |" in markdown
  saved = json.load(open(os.path.join(root, "tables", "report003.json")))
  assert saved["figure2"]["sizes"]["6k"]["student_cft_crd"]["closed"] == pytest.approx(0.38)
  assert sorted(os.listdir(os.path.join(root, "tables"))) == [
      "report003.json", "report003.md", "report003_sizes.png", "report003_teachers.png"]


def test_few_shot_standardized_does_not_depend_on_the_embedding_scale():
  from jax_asc.eval import fewshot
  rng = np.random.default_rng(4)
  labels = np.repeat(np.arange(4), 12)
  centres = rng.normal(size=(4, 16))
  x = centres[labels] + 0.5 * rng.normal(size=(48, 16))
  args = dict(shots=3, episodes=6, seed=0)
  plain = fewshot.few_shot(x, labels, **args)["accuracy"]["mean"]
  tiny = fewshot.few_shot(1e-4 * x, labels, **args)["accuracy"]["mean"]
  assert plain > 0.8 and tiny < 0.5            # the L2 penalty swamps tiny features
  for scale in (1.0, 1e-4, 1e3):
    scaled = fewshot.few_shot(scale * x, labels, standardize=True, **args)["accuracy"]["mean"]
    assert scaled == pytest.approx(fewshot.few_shot(x, labels, standardize=True, **args)
                                   ["accuracy"]["mean"]) and scaled > 0.8
  support, queries = fewshot.standardized(x[:8], x[8:])
  np.testing.assert_allclose(support.mean(0), 0, atol=1e-12)
  np.testing.assert_allclose(support.std(0), 1, atol=1e-12)
