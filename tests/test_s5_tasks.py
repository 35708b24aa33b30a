"""Report 004's tasks and losses: the tagging terms (L_aux, L_self, the KD ramp), the tagging
evaluator, the separation task's query and loss, and the system evaluation's pieces."""
import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import report004_s5
from jax_asc import plans
from jax_asc.eval import evaluators, tables
from jax_asc.losses import pit, registry, separation
from jax_asc.stages import system_eval
from jax_asc.tasks import separation as separation_task
from jax_asc.tasks import tagging
from jax_asc.teachers import cache as cache_lib

RNG = np.random.default_rng(0)


def _logits(b=5, k=3, c=4, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(0, 2, (b, k, c)), jnp.float32)


def test_aux_and_self_terms_follow_their_definitions():
  main, aux9, aux10 = _logits(seed=1), _logits(seed=2), _logits(seed=3)
  targets = jnp.asarray([[0, 1, 3], [2, 3, 3], [3, 3, 3], [1, 1, 0], [2, 0, 3]])
  settings = registry.default_settings()
  inputs = {"track_logits": main, "aux_track_logits": {9: aux9, 10: aux10},
            "track_targets": targets}
  aux = registry.total({"aux_pit_ce": 1.0}, settings, inputs)[0]
  expected = np.mean([pit.pit_cross_entropy(a, targets)[0] for a in (aux9, aux10)])
  np.testing.assert_allclose(float(aux), expected, rtol=1e-6)
  # L_self, written out: per example min over the 6 permutations of the mean track KL.
  t = 1.5
  p_main = np.asarray(jax.nn.softmax(main / t, -1))
  def kl(a):
    log_a = np.asarray(jax.nn.log_softmax(a / t, -1))
    per = []
    for b in range(main.shape[0]):
      per.append(min(np.mean([np.sum(p_main[b, i] * (np.log(p_main[b, i]) - log_a[b, pi[i]]))
                              for i in range(3)]) for pi in itertools.permutations(range(3))))
    return t * t * np.mean(per)
  self_value = registry.total({"self_kd": 1.0}, settings, inputs)[0]
  np.testing.assert_allclose(float(self_value), (kl(aux9) + kl(aux10)) / 2, rtol=1e-5)
  # The main head only teaches: no gradient reaches it through L_self.
  grad = jax.grad(lambda m: pit.self_distillation(m, {9: aux9}))(main)
  assert float(jnp.abs(grad).max()) == 0.0
  assert float(jnp.abs(jax.grad(lambda a: pit.self_distillation(main, [a]))(aux9)).max()) > 0


def test_pi_kd_weight_ramps_up():
  student, teacher = _logits(seed=4), _logits(seed=5)
  settings = registry.default_settings()
  settings["pi_kd"].update(warmup_steps=10)
  full = float(pit.pi_kd_loss(student, teacher)[0])
  for step, factor in ((0, 0.0), (5, 0.5), (10, 1.0), (40, 1.0)):
    value = registry.total({"pi_kd": 1.0}, settings, {
        "track_logits": student, "teachers": {"ema": {"track_logits": teacher}},
        "step": jnp.asarray(step)})[0]
    np.testing.assert_allclose(float(value), factor * full, rtol=1e-6, atol=1e-7)


def test_tagging_evaluator_scores_multisets():
  silence = 3
  labels = np.array([[0, 1, silence], [2, silence, silence], [silence] * 3, [1, 1, silence]])
  logits = np.full((4, 3, 4), -5.0)
  predicted = [[1, 0, silence], [2, 1, silence], [silence] * 3, [1, silence, silence]]
  for i, row in enumerate(predicted):
    for k, c in enumerate(row):
      logits[i, k, c] = 5.0
  split = type("S", (), {"__getitem__": lambda self, k: labels})()
  result = dict(evaluators.tagging()({"track_logits": logits}, split))
  # Exact multisets: mixtures 0 and 2 of 4; sources: TP 4 (0,1 | 2 | 1), FP 1, FN 1.
  assert result["accuracy_mixture"] == 50.0
  np.testing.assert_allclose(result["accuracy_source"], 100 * 4 / 6)
  np.testing.assert_allclose(result["pit_ce"], float(pit.pit_cross_entropy(
      jnp.asarray(logits), jnp.asarray(labels))[0]), rtol=1e-5)


def test_separation_query_and_loss():
  labels = jnp.asarray([[2, 0, 4], [4, 4, 4]])     # 4 classes + silence (4)
  query = separation_task.label_vector(labels, 4)
  np.testing.assert_array_equal(query, [[0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0], [0] * 12])
  estimates = jnp.asarray(RNG.normal(size=(2, 3, 200)), jnp.float32)
  references = jnp.asarray(RNG.normal(size=(2, 3, 200)), jnp.float32)
  value = registry.total({"ca_pit_snr": 1.0}, registry.default_settings(), {
      "separated": estimates, "sources": references, "track_targets": labels, "silence": 4})[0]
  expected = separation.class_aware_pit_snr(estimates, references, labels, silence=4)[0]
  np.testing.assert_allclose(float(value), float(expected), rtol=1e-6)


def test_tagging_task_trains_one_step(tmp_path):
  from jax_asc.train import loop
  from jax_asc.train import mesh as mesh_lib
  config = report004_s5.get_config("tagger_4c_sd,smoke")
  config.data.s5.update(num_train=8, num_validation=4, num_test=4, duration_s=0.5)
  config.data.cache_dir = str(tmp_path)
  config.model.update(embed_dim=16, depth=2, num_heads=2, input_size=(80, 51),
                      track_input_dim=8, track_hidden_dim=8)
  from jax_asc import data as data_lib
  split = data_lib.load_splits(config.data, ["train"])["train"]
  task = tagging.build(config, split)
  assert task.ema_teacher and task.rng_streams == ("spatial_mask",)
  batch = {k: np.asarray(split.column_rows(k, np.arange(4))) for k in task.columns}
  batch["mask"] = np.ones(4, bool)
  mesh = mesh_lib.make_mesh(jax.devices()[:1])
  setup = loop.setup(task, config, loop.TrainData(2, lambda start: iter([batch] * 4)), mesh=mesh)
  state, metrics = setup.trainer.train_step(setup.state, mesh_lib.global_batch(batch, mesh))
  assert set(metrics) >= {"pit_ce", "aux_pit_ce", "pi_kd", "self_kd", "accuracy_mixture"}
  assert float(metrics["pi_kd"]) == 0.0          # ramped from 0 at step 0
  assert all(np.isfinite(float(v)) for v in metrics.values())
  with pytest.raises(ValueError, match="model.channels = 4 but split"):
    tagging.build(config, split.with_columns({"waveform": np.zeros((8, 1, 16000), np.float32)}))


def test_system_eval_rows_and_cache_checks(tmp_path):
  assert system_eval.parse_rows("1c/baseline=a, 4c/masked_sd=b") == [
      ("1c", "baseline", "a"), ("4c", "masked_sd", "b")]
  with pytest.raises(ValueError, match="expected '<track>/<system>=<run>'"):
    system_eval.parse_rows("1c=a")
  split = type("S", (), {})()
  split.name, split.dataset, split.sample_rate = "test", "s5_synthetic", 32000
  split.num_samples, split.classes = 16000, tuple("abc")
  split.filename = np.array(["m0", "m1"])
  run = str(tmp_path / "tagger")
  logits = np.zeros((2, 3, 4), np.float32)
  logits[1, 0, 2] = logits[0, :, 3] = 1.0
  cache_lib.save(cache_lib.predictions_dir(run, "test"), np.array(["m1", "m0"]),
                 {"track_logits": logits}, {"split_fingerprint": cache_lib.split_fingerprint(split)})
  np.testing.assert_array_equal(system_eval.tagger_labels(run, split), [[2, 0, 0], [3, 3, 3]])
  np.testing.assert_array_equal(system_eval.silence_last(np.array([[3, 1, 3], [0, 3, 2]]), 3),
                                [[1, 3, 3], [0, 2, 3]])
  split.filename = np.array(["m0", "m2"])
  with pytest.raises(cache_lib.CacheMismatchError, match="another version of split 'test'"):
    system_eval.tagger_labels(run, split)
  ours = {"1c": {"baseline": {"capi_sdri": 1.0, "accuracy_mixture": 2.0,
                              "accuracy_source": 3.0}}}
  text = system_eval.markdown(ours, "test")
  assert "| baseline | 1.000 | 2.000 | 3.000 | 8.171 | 57.143 | 67.147 |" in text
  assert "| masked_sd | — | — | — | 8.354 |" in text and "Table 2" not in text


def test_report004_plan_and_configs():
  real = plans.load_plan("configs/report004_s5.py")
  smoke = plans.load_plan("configs/report004_s5.py", smoke=True)
  assert [r.path for r in real.runs][-1] == "system" and "separator" not in [
      r.path for r in real.runs]
  assert "separator" in smoke.runs[-1].needs
  assert real.checkpoints == ("m2d", "resunetk", "qwen")
  # The Qwen taggers read the cache run's folder and need it; the system table has their rows.
  by_path = {r.path: r for r in real.runs}
  for role in ("tagger_1c_qwen", "tagger_4c_qwen"):
    run = by_path[f"taggers/{role}"]
    assert run.needs == ("qwen_cache",) and run.stages[-1] == "inference_checkpoint"
    assert run.overrides["teachers.qwen.folder"] == "{workdir}/qwen_cache/teacher_caches/qwen"
  assert by_path["qwen_cache"].stages == ("teacher_cache",)
  assert "1c/semantic_kd={workdir}/taggers/tagger_1c_qwen" in by_path["system"].overrides[
      "system.taggers"]
  sd = report004_s5.get_config("tagger_4c_sd,root=/data,m2d=/ckpt/w.pth")
  assert sd.model_init.kind == "m2d_torch" and sd.model.spatial_mask_rate == 0.3
  assert dict(sd.loss.terms)["aux_pit_ce"] == 0.05 and sd.teachers.ema.decay == 0.999
  assert sd.optimizer.param_groups == (("encoder/.*", {"lr_mult": 0.1}),)
  base = report004_s5.get_config("tagger_1c,root=/data,m2d=/w.pth")
  assert base.optimizer.param_groups == (("encoder/.*", {"frozen": True}),)
  with pytest.raises(ValueError, match="config option 'passt' unknown"):
    report004_s5.get_config("tagger_1c,root=/data,m2d=/w.pth,passt=x")
  with pytest.raises(ValueError, match="starts from the M2D checkpoint: add m2d="):
    report004_s5.get_config("tagger_1c,root=/data")
  normed = report004_s5.get_config("tagger_1c,root=/data,m2d=/w.pth,m2d_norm=-6.5:3.5")
  assert (normed.frontend.norm_shift, normed.frontend.norm_scale) == (6.5, 3.5)


def test_report004_tables_read_the_system_evaluation(tmp_path):
  workdir = tmp_path / "chain"
  (workdir / "taggers" / "tagger_1c").mkdir(parents=True)
  with open(workdir / "taggers" / "tagger_1c" / "config.json", "w") as f:
    json.dump({"evaluate": {"split": "test"}}, f)
  reports = workdir / "system" / "reports"
  reports.mkdir(parents=True)
  ours = {"4c": {"masked_sd": {"capi_sdri": 4.0, "accuracy_mixture": 5.0,
                               "accuracy_source": 6.0}}}
  with open(reports / "system_eval.json", "w") as f:
    json.dump({"split": "test", "ours": ours, "reported": {}}, f)
  with open(reports / "system_eval.md", "w") as f:
    f.write(system_eval.markdown(ours, "test"))
  text = tables.write("report004", str(workdir), smoke=True)
  assert "| masked_sd | 4.000 | 5.000 | 6.000 | 8.546 |" in text
  assert os.path.exists(workdir / "tables" / "report004_capi_sdri.png")
