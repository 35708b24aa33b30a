"""Pieces of the report chains: MixStyle/mixup, teacher caches and ensembles, soups, DSFT tables."""
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_asc import fingerprint
from jax_asc.audio import augment
from jax_asc.data.dataset import Split
from jax_asc.losses import distillation, registry
from jax_asc.stages import finetune_device, model_init, soup
from jax_asc.teachers import cache


def _numpy_freq_mixstyle(x, perm, lam, eps=1e-6):
  mu = x.mean(axis=2, keepdims=True)
  sig = np.sqrt(x.var(axis=2, ddof=1, keepdims=True) + eps)
  lam = lam[:, None, None]
  return ((x - mu) / sig * (lam * sig + (1 - lam) * sig[perm]) +
          lam * mu + (1 - lam) * mu[perm])


def test_mixstyle_matches_numpy_and_properties():
  x = np.random.default_rng(0).normal(2.0, 3.0, size=(6, 8, 20)).astype(np.float32)
  perm, lam = np.array([3, 0, 5, 1, 2, 4]), np.linspace(0.1, 0.9, 6).astype(np.float32)
  ours = augment.mix_statistics(jnp.asarray(x), jnp.asarray(perm), jnp.asarray(lam), (2,))
  np.testing.assert_allclose(ours, _numpy_freq_mixstyle(x, perm, lam), rtol=1e-4, atol=1e-4)
  # λ = 0: each example takes its partner's per-frequency mean; λ = 1: unchanged.
  swapped = augment.mix_statistics(jnp.asarray(x), jnp.asarray(perm), jnp.zeros(6), (2,))
  np.testing.assert_allclose(np.mean(swapped, 2), x[perm].mean(2), atol=1e-4)
  same = augment.mix_statistics(jnp.asarray(x), jnp.asarray(perm), jnp.ones(6), (2,))
  np.testing.assert_allclose(same, x, atol=1e-4)
  key = jax.random.key(0)
  np.testing.assert_array_equal(augment.mixstyle(key, jnp.asarray(x), 0.0, 0.3), x)
  applied = augment.mixstyle(key, jnp.asarray(x), 1.0, 0.3)
  assert not np.allclose(applied, x)
  # MixStyle (not frequency-wise) keeps the per-frequency shape of each example up to scale.
  global_style = augment.mixstyle(key, jnp.asarray(x), 1.0, 0.3, frequency_wise=False)
  assert np.allclose(np.corrcoef(np.asarray(global_style)[0].ravel(), x[0].ravel())[0, 1], 1,
                     atol=1e-4)


def test_mixup_draw_and_mix():
  perm, lam = augment.mixup_draw(jax.random.key(1), 16, 0.3)
  assert sorted(np.asarray(perm).tolist()) == list(range(16))
  assert np.all(np.asarray(lam) >= 0.5) and np.all(np.asarray(lam) <= 1)
  one_hot = jax.nn.one_hot(jnp.arange(16) % 4, 4)
  mixed = augment.mix(one_hot, perm, lam)
  np.testing.assert_allclose(mixed.sum(-1), 1.0, atol=1e-6)


def _split(filenames, n_classes=3):
  n = len(filenames)
  return Split(name="train", columns=dict(
      waveform=np.zeros((n, 1, 8), np.float32), label=np.zeros(n, np.int32),
      recording_device=np.zeros(n, np.int32), filename=np.asarray(filenames),
      index=np.arange(n, dtype=np.int32) * 2), classes=[f"c{i}" for i in range(n_classes)],
      devices=["a"], sample_rate=32000, dataset="test")


def _record(workdir, stage, config_json, token):
  (workdir / f"{stage}.done.json").write_text(json.dumps(
      {"stage": stage, "config_fingerprint": fingerprint.of_json(config_json), "token": token}))


def _teacher(tmp_path, name, split, logits, *, seed=0, **outputs):
  """A teacher run as its train and predict stages leave it (records and the cache)."""
  workdir = tmp_path / name
  workdir.mkdir()
  config_json = json.dumps({"seed": seed, "stage": "train", "model": {"name": "x"}})
  (workdir / "config.json").write_text(config_json)
  _record(workdir, "train", config_json, "t-train")
  cache.save(cache.predictions_dir(str(workdir), "train"), split.filename,
             dict(logits=logits, **outputs), {
                 "teacher_config_fingerprint": fingerprint.of_json(config_json),
                 "token": f"{name}-predict", "classes": list(split.classes),
                 "split_fingerprint": cache.split_fingerprint(split)})
  _record(workdir, "predict", config_json, f"{name}-predict")
  return str(workdir)


def _spec(members, combine="logits", output="logits"):
  return types.SimpleNamespace(source="cache", runs=",".join(members), combine=combine,
                               output=output)


def test_gathered_cache_aligns_checks_and_is_memory_mapped(tmp_path):
  split = _split(["f1", "f2", "f3"])
  rng = np.random.default_rng(0)
  logits_a, logits_b = rng.normal(size=(2, 3, 3)).astype(np.float32)
  shuffled = _split(["f3", "f1", "f2"])            # the teacher predicted in another order
  a = _teacher(tmp_path, "a", shuffled, logits_a[[2, 0, 1]])
  b = _teacher(tmp_path, "b", split, logits_b)
  run = str(tmp_path / "student")
  stacked = cache.gathered(_spec([a, b]), "ensemble", run, split)
  assert isinstance(stacked, np.memmap) and stacked.shape == (3, 2, 3)   # (N, K, C) on disk
  np.testing.assert_allclose(stacked, np.stack([logits_a, logits_b], axis=1), atol=1e-6)
  assert os.path.exists(os.path.join(cache.gathered_dir(run, "ensemble", "train"),
                                     "logits.npy"))
  # Report 000 averages logits, report 001 probabilities: different targets.
  members = jnp.asarray(np.swapaxes(stacked, 0, 1))
  by_logits = distillation.ensemble_log_probs(members, 2.0, "logits")
  by_probs = distillation.ensemble_log_probs(members, 2.0, "probabilities")
  expected = np.log(np.mean(np.exp(np.asarray(jax.nn.log_softmax(members / 2.0))), 0))
  np.testing.assert_allclose(by_probs, expected, atol=1e-5)
  assert not np.allclose(by_logits, by_probs)
  # The cache on disk was made for [a, b] in logits mode: other settings are refused.
  with pytest.raises(cache.CacheMismatchError, match="combine"):
    cache.gathered(_spec([a, b], "probabilities"), "ensemble", run, split)
  with pytest.raises(cache.CacheMismatchError, match="members"):
    cache.gathered(_spec([a]), "ensemble", run, split)
  with pytest.raises(cache.CacheMismatchError, match="split fingerprint"):
    cache.gathered(_spec([a, b]), "ensemble", run, _split(["f1", "f2", "f4"]))
  with pytest.raises(cache.CacheMismatchError, match="split fingerprint"):   # order matters
    cache.gathered(_spec([a, b]), "ensemble", run, shuffled)
  # config.json rewritten by a later call of the same workdir (another stage, other
  # overrides) does not invalidate the caches: they are checked against the stages' records.
  (tmp_path / "b" / "config.json").write_text(json.dumps({"seed": 5, "stage": "evaluate"}))
  cache.gathered(_spec([a, b]), "ensemble", run, split)
  cache.gather(_spec([a, b]), "ensemble", split)
  # A member retrained with another configuration after predicting is refused.
  _record(tmp_path / "b", "train", json.dumps({"seed": 1, "model": {"name": "x"}}), "t2")
  with pytest.raises(cache.CacheMismatchError, match="changed since it predicted"):
    cache.gathered(_spec([a, b]), "ensemble", run, split)
  with pytest.raises(cache.CacheMismatchError, match="changed since it predicted"):
    cache.gather(_spec([a, b]), "ensemble", split)
  # A cache that the recorded predict stage did not write (token differs) is refused.
  _record(tmp_path / "a", "predict", json.dumps({"seed": 0, "model": {"name": "x"}}), "other")
  with pytest.raises(cache.CacheMismatchError, match="not the cache"):
    cache.gather(_spec([a]), "ensemble", split)


def test_cache_teacher_columns_join_by_filename_and_stream_with_the_batches(tmp_path):
  """Any cached output (here an embedding) joins the split as a column, in split order, and is
  read batch by batch from the memory map (the order and every row checked)."""
  from jax_asc.data import pipeline
  split = _split([f"f{i}" for i in range(10)])
  rng = np.random.default_rng(1)
  embedding = rng.normal(size=(10, 5)).astype(np.float32)
  order = rng.permutation(10)
  a = _teacher(tmp_path, "a", split.take(order), np.zeros((10, 3), np.float32),
               embedding=embedding[order])
  spec = _spec([a], combine="mean", output="embedding")
  column = cache.gathered(spec, "beats", str(tmp_path / "student"), split)
  joined = split.with_columns({cache.column_name("beats", "embedding"): column})
  seen = 0
  for batch in pipeline.train_batches(joined, global_batch=4, seed=0, num_epochs=1):
    rows = batch["index"] // 2                      # _split's index is 2 · row
    np.testing.assert_array_equal(batch["teacher/beats/embedding"][:, 0], embedding[rows])
    seen += len(rows)
  assert seen == 8
  with pytest.raises(cache.CacheMismatchError, match=r"holds outputs \['embedding', 'logits'\], "
                                                     r"not 'projected'"):
    cache.gather(_spec([a], output="projected"), "x", split)


def test_ensemble_refuses_missing_files_and_absent_predictions(tmp_path):
  split = _split(["f1", "f2", "f3"])
  a = _teacher(tmp_path, "a", _split(["f1", "f2"]), np.zeros((2, 3), np.float32))
  with pytest.raises(cache.CacheMismatchError, match="no entry for 1 of the 3"):
    cache.gather(_spec([a]), "ensemble", split)
  (tmp_path / "c").mkdir()
  (tmp_path / "c" / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match="run the predict stage"):
    cache.gather(_spec([str(tmp_path / "c")]), "ensemble", split)
  with pytest.raises(ValueError, match="teachers.ensemble.runs is empty"):
    cache.gather(_spec([]), "ensemble", split)


def test_teacher_config_errors_name_the_key_and_the_choices():
  from configs import common as configs_common
  from jax_asc import teachers
  config = configs_common.base_config()
  config.teachers.t = configs_common.online_teacher()
  config.teachers.t.source = "onlin"
  with pytest.raises(ValueError, match=r"teachers.t.source must be one of \['cache', 'ema', "
                                       r"'online', 'qwen_audio'\], got 'onlin'"):
    teachers.specs(config)
  config.teachers.t = configs_common.cache_teacher()
  config.teachers.t.run = "x"   # cache teachers take `runs`
  with pytest.raises(ValueError, match=r"teachers.t \(source 'cache'\) has no setting \['run'\]; "
                                       r"valid: \['combine', 'output', 'runs', 'source'\]"):
    teachers.specs(config)
  config.teachers.t = configs_common.ema_teacher()
  config.teachers.u = configs_common.ema_teacher()
  with pytest.raises(ValueError, match="a run keeps one EMA"):
    teachers.specs(config)


def test_soup_average_and_pretrained_merge():
  trees = [{"w": np.full((2,), float(i)), "b": {"x": np.ones(3) * i}} for i in range(3)]
  averaged = soup.average(trees)
  np.testing.assert_allclose(averaged["w"], 1.0)
  np.testing.assert_allclose(averaged["b"]["x"], 1.0)
  target = {"head": {"kernel": jnp.zeros((4, 10))}, "body": {"kernel": jnp.zeros((3, 3))}}
  source = {"head": {"kernel": np.ones((4, 527))}, "body": {"kernel": np.ones((3, 3))}}
  merged, skipped = model_init.merge(target, source)
  assert skipped == ["/head/kernel"]
  np.testing.assert_array_equal(merged["body"]["kernel"], 1.0)
  np.testing.assert_array_equal(merged["head"]["kernel"], 0.0)


def test_dsft_table_deltas_only_for_tuned_devices():
  before = {"per_device": {"a": 0.5, "s4": 0.4}, "accuracy": 0.45}
  after = {"per_device": {"a": 0.6, "s4": 0.4}, "accuracy": 0.5}
  table = finetune_device.routed_table(before, after, ["a"], ["a", "s4"])
  assert "| Δ | +10.00 | – | +5.00 |" in table


def test_feature_pairs_parse_and_errors():
  assert registry.pairs("s1:s1, s3:s2", "ssfm") == (("s1", "s1"), ("s3", "s2"))
  with pytest.raises(ValueError, match="student_stage:teacher_stage"):
    registry.pairs("s1", "ssfm")


def test_a_soup_saved_again_replaces_the_first(tmp_path):
  """Stage soup run twice (a changed soup.top_k) writes the same step again."""
  from jax_asc.train import checkpoint as checkpoint_lib
  checkpoints = checkpoint_lib.Checkpoints(str(tmp_path), best_metric="m", best_mode="max",
                                           keep_best=1)
  for value in (1.0, 2.0):
    checkpoints.save_soup(7, {"params": {"w": np.full(3, value, np.float32)},
                              "batch_stats": {"s": np.zeros(2, np.float32)}}, {"step": 7})
  variables, meta = checkpoints.restore_variables("soup")
  checkpoints.close()
  np.testing.assert_array_equal(variables["params"]["w"], 2.0)
  assert meta["step"] == 7
