"""Few-shot and retrieval evaluation (report 003 section 4): the pure functions against
straightforward computations, the synthetic open set, the seen/unseen mapping, and the stage end
to end on a tiny trained run."""
import json
import os

import numpy as np
import pytest

from jax_asc.eval import fewshot


def _clusters(n_classes=4, per_class=12, dim=8, spread=0.05, seed=0):
  """Embeddings of well separated classes (one-hot centres plus small noise)."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(n_classes), per_class)
  centres = np.eye(n_classes, dim) * 5.0
  return centres[labels] + spread * rng.standard_normal((len(labels), dim)), labels


# --- sampling -----------------------------------------------------------------------------------

def test_episodes_draw_k_distinct_examples_of_every_class_reproducibly():
  labels = np.array([0] * 7 + [1] * 5 + [-1] * 3 + [2] * 9)
  rows = fewshot.sample_episodes(labels, shots=3, episodes=20, seed=4)
  assert rows.shape == (20, 9)
  for episode in rows:
    assert len(set(episode.tolist())) == 9
    assert sorted(labels[episode].tolist()) == [0] * 3 + [1] * 3 + [2] * 3
  np.testing.assert_array_equal(rows, fewshot.sample_episodes(labels, 3, 20, 4))
  assert not np.array_equal(rows, fewshot.sample_episodes(labels, 3, 20, 5))
  # Episode e depends only on (seed, K, e): a shorter run is a prefix of a longer one.
  np.testing.assert_array_equal(rows[:5], fewshot.sample_episodes(labels, 3, 5, 4))
  # Over many episodes every example of a class is drawn.
  many = fewshot.sample_episodes(labels, 3, 200, 0)
  assert set(many.ravel().tolist()) == set(np.flatnonzero(labels >= 0).tolist())


def test_a_class_with_fewer_than_k_examples_names_the_dataset_and_class():
  labels = np.array([0] * 6 + [1] * 2)
  with pytest.raises(ValueError, match=r"tut17: 'bus' \(class 1\) has 2 example"):
    fewshot.sample_episodes(labels, 5, 3, 0, class_names=["beach", "bus"], dataset="tut17")


# --- intervals ----------------------------------------------------------------------------------

def test_mean_interval_is_the_student_t_interval():
  from scipy import stats
  values = np.array([0.5, 0.7, 0.6, 0.65, 0.55, np.nan])
  mean, half = fewshot.mean_interval(values)
  kept = values[:5]
  s = np.sqrt(np.sum((kept - kept.mean()) ** 2) / 4)
  assert mean == pytest.approx(0.6)
  assert half == pytest.approx(stats.t.ppf(0.975, 4) * s / np.sqrt(5))
  assert np.isnan(fewshot.mean_interval([0.3])[1])


# --- K-shot logistic regression -----------------------------------------------------------------

def test_separable_embeddings_give_accuracy_one_everywhere():
  x, y = _clusters()
  result = fewshot.few_shot(x, y, shots=2, episodes=5, seed=0, seen=[0, 1],
                            class_names=["a", "b", "c", "d"])
  assert result["accuracy"]["mean"] == 1.0 and result["accuracy"]["ci95"] == 0.0
  assert result["per_class"] == {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}
  assert result["seen"]["mean"] == 1.0 and result["seen"]["classes"] == 2
  assert result["unseen"]["mean"] == 1.0 and result["unseen"]["classes"] == 2
  assert result["support"] == 8 and result["test"] == 48 - 8


def test_one_episode_matches_a_logistic_regression_fitted_by_hand():
  from sklearn.linear_model import LogisticRegression
  x, y = _clusters(n_classes=5, per_class=10, spread=3.0, seed=1)
  test_x, test_y = _clusters(n_classes=5, per_class=7, spread=3.0, seed=2)
  result = fewshot.few_shot(x, y, shots=3, episodes=4, seed=7, test_embeddings=test_x,
                            test_labels=test_y, seen=[0, 2])
  rows = fewshot.sample_episodes(y, 3, 4, 7)
  accuracies, per_class = [], []
  for support in rows:
    predicted = LogisticRegression(max_iter=1000).fit(x[support], y[support]).predict(test_x)
    accuracies.append(np.mean(predicted == test_y))
    per_class.append([np.mean(predicted[test_y == c] == c) for c in range(5)])
  per_class = np.array(per_class)
  assert result["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
  assert 0.2 < result["accuracy"]["mean"] < 1.0       # noisy enough to make mistakes
  for c in range(5):
    assert result["per_class"][str(c)] == pytest.approx(per_class[:, c].mean())
  assert result["seen"]["mean"] == pytest.approx(per_class[:, [0, 2]].mean())
  assert result["unseen"]["mean"] == pytest.approx(per_class[:, [1, 3, 4]].mean())
  again = fewshot.few_shot(x, y, shots=3, episodes=4, seed=7, test_embeddings=test_x,
                           test_labels=test_y, seen=[0, 2])
  assert again == result


def test_the_interval_shrinks_with_more_episodes():
  x, y = _clusters(n_classes=4, per_class=20, spread=3.0, seed=3)
  few = fewshot.few_shot(x, y, shots=2, episodes=5, seed=0)
  many = fewshot.few_shot(x, y, shots=2, episodes=80, seed=0)
  assert 0 < many["accuracy"]["ci95"] < few["accuracy"]["ci95"]


def test_a_test_part_with_a_class_the_pool_lacks_is_an_error():
  x, y = _clusters(n_classes=3, per_class=6)
  with pytest.raises(ValueError, match="'c' .*support pool lacks"):
    fewshot.few_shot(x[y < 2], y[y < 2], shots=2, episodes=2, seed=0, test_embeddings=x,
                     test_labels=y, class_names=["a", "b", "c"], dataset="esc50")


# --- retrieval ----------------------------------------------------------------------------------

def _ap_by_hand(x, y, i):
  """AP of query i: rank the others by cosine similarity, mean precision at each relevant hit."""
  unit = x / np.linalg.norm(x, axis=1, keepdims=True)
  others = [j for j in range(len(y)) if j != i and y[j] >= 0]
  ranked = sorted(others, key=lambda j: -float(unit[i] @ unit[j]))
  hits, precisions = 0, []
  for rank, j in enumerate(ranked, start=1):
    if y[j] == y[i]:
      hits += 1
      precisions.append(hits / rank)
  return np.mean(precisions) if precisions else np.nan


def test_average_precision_matches_a_direct_computation_and_sklearn():
  from sklearn.metrics import average_precision_score
  rng = np.random.default_rng(0)
  x = rng.standard_normal((40, 6))
  y = rng.integers(0, 4, 40)
  y[[3, 17]] = -1
  y[5] = 9   # a class of one: no other relevant item, no AP
  ap = fewshot.average_precisions(x, y, chunk=7)
  for i in range(40):
    expected = np.nan if y[i] < 0 or i == 5 else _ap_by_hand(x, y, i)
    np.testing.assert_allclose(ap[i], expected)
    if not np.isnan(expected):
      unit = x / np.linalg.norm(x, axis=1, keepdims=True)
      others = np.array([j for j in range(40) if j != i and y[j] >= 0])
      score = average_precision_score(y[others] == y[i], unit[others] @ unit[i])
      assert ap[i] == pytest.approx(score)
  assert fewshot.retrieval_map(x, y) == pytest.approx(np.nanmean(ap))


def test_separable_embeddings_give_map_one():
  x, y = _clusters(n_classes=5, per_class=6)
  assert fewshot.retrieval_map(x, y) == pytest.approx(1.0)


# --- the synthetic open set and the seen/unseen mapping -----------------------------------------

def test_synthetic_open_set_is_deterministic_with_seen_and_new_scenes(data_dir):
  from jax_asc.data import synthetic, synthetic_open
  a = synthetic_open.build(0, per_class=2, new_classes=2)
  b = synthetic_open.build(0, per_class=2, new_classes=2)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert np.bincount(a["label"]).tolist() == [2] * 12
  split = synthetic_open.load(0, per_class=2, new_classes=2, cache_dir=data_dir)
  assert split.classes[:10] == synthetic.CLASSES
  assert split.classes[10:] == ("novel_10", "novel_11")
  np.testing.assert_array_equal(split["waveform"][:, 0], a["waveform"])
  assert set(np.asarray(split["identifier"]).tolist()) <= {
      f"{c}-{loc}" for c in split.classes for loc in synthetic.TEST_LOCATIONS}
  # A new scene is not a copy of a training scene, and the seen ones are new clips.
  assert not np.array_equal(a["waveform"][a["label"] == 10], a["waveform"][a["label"] == 0])
  test = synthetic.build_split(0, "test", 10)
  assert not any(np.array_equal(w, t) for w in a["waveform"] for t in test["waveform"])


def test_seen_mapping_names_real_classes_with_the_unseen_counts():
  from configs import common as config_common
  from jax_asc.data import formats, synthetic_open
  from jax_asc.stages import fewshot as stage
  config = config_common.base_config()
  vocab = {"tut17": formats.TUT17_CLASSES, "icme24": formats.ICME24_CLASSES,
           "esc50": formats.ESC50_CLASSES, "synthetic_open": synthetic_open.class_names(5)}
  unseen = {}
  for name, classes in vocab.items():
    seen = stage.seen_classes(config, name, classes)
    unseen[name] = [c for i, c in enumerate(classes) if i not in seen]
  assert len(unseen["tut17"]) == 11 and "city_center" in unseen["tut17"]
  assert sorted(unseen["icme24"]) == ["Bar", "Construction site", "Restaurant"]
  assert len(unseen["esc50"]) == 50
  assert unseen["synthetic_open"] == [f"novel_{k}" for k in range(10, 15)]
  config.fewshot.seen.tut17 = "bus,metro"
  with pytest.raises(ValueError, match=r"fewshot.seen.tut17: \['metro'\]"):
    stage.seen_classes(config, "tut17", formats.TUT17_CLASSES)


def test_dataset_roots_are_checked_and_a_missing_file_is_named(tmp_path):
  from configs import common as config_common
  from jax_asc.data import audio_io, formats
  from jax_asc.stages import fewshot as stage
  config = config_common.base_config()
  with pytest.raises(ValueError, match="fewshot.roots.tut17 is empty"):
    stage.load_parts(config, "tut17", 32000)
  config.fewshot.roots.tut17 = str(tmp_path / "absent")
  with pytest.raises(FileNotFoundError, match="fewshot.roots.tut17"):
    stage.load_parts(config, "tut17", 32000)
  config.fewshot.roots.tut17 = str(tmp_path)
  with pytest.raises(formats.MetadataError, match="meta.txt: metadata file not found"):
    stage.load_parts(config, "tut17", 32000)
  # The lists name a file the folder lacks: the reader's error names it.
  (tmp_path / "evaluation_setup").mkdir()
  (tmp_path / "meta.txt").write_text("audio/b020_0_10.wav\tbeach\tb020\n"
                                     "audio/b021_0_10.wav\tbus\tb021\n")
  (tmp_path / "evaluation_setup" / "fold1_train.txt").write_text("audio/b020_0_10.wav\tbeach\n")
  (tmp_path / "evaluation_setup" / "fold1_evaluate.txt").write_text("audio/b021_0_10.wav\tbus\n")
  config.data.cache_dir = str(tmp_path / "cache")
  with pytest.raises(audio_io.BadAudioError, match="b020_0_10.wav: file listed in the metadata "
                     "but missing"):
    stage.load_parts(config, "tut17", 32000)
  config.fewshot.roots.esc50 = str(tmp_path)
  with pytest.raises(formats.MetadataError, match="esc50.csv: metadata file not found"):
    stage.load_parts(config, "esc50", 32000)
  config.fewshot.datasets = "tut17,tau22"
  with pytest.raises(ValueError, match=r"unknown \['tau22'\]"):
    stage.run(config, str(tmp_path))


def test_mean_1s_averages_the_window_embeddings_of_each_clip():
  from jax_asc.data.dataset import Split
  from jax_asc.stages import fewshot as stage

  class Model:   # "embeds" a clip as (its mean, its length): windows are visible
    def outputs(self, split):
      wave = split.audio()[:, 0]
      return {"embedding": np.stack([wave.mean(1), np.full(len(wave), wave.shape[1])], 1)}

  rate = 50
  wave = np.random.default_rng(0).standard_normal((4, 1, 3 * rate)).astype(np.float32)
  split = Split(name="x", dataset="toy", classes=("a",), devices=("d",), sample_rate=rate,
                columns={"waveform": wave, "filename": np.array(list("abcd")),
                         "index": np.arange(4, dtype=np.int32)})
  clip = stage._embed(Model(), split, "embedding", "clip")
  windows = stage._embed(Model(), split, "embedding", "mean_1s")
  np.testing.assert_allclose(clip[:, 0], wave[:, 0].mean(1), rtol=1e-5)
  np.testing.assert_allclose(windows[:, 0], wave[:, 0].mean(1), rtol=1e-5, atol=1e-6)
  assert clip[:, 1].tolist() == [150] * 4 and windows[:, 1].tolist() == [50] * 4
  short = Split(name="x", dataset="toy", classes=("a",), devices=("d",), sample_rate=rate,
                columns={"waveform": wave[:, :, :75], "filename": np.array(list("abcd")),
                         "index": np.arange(4, dtype=np.int32)})
  with pytest.raises(ValueError, match="fewshot.window='mean_1s'.*not a whole multiple"):
    stage._embed(Model(), short, "embedding", "mean_1s")


# --- the stage end to end -----------------------------------------------------------------------

def _fake_esc50(root, classes=((0, "dog"), (1, "rooster"), (10, "rain")), per_fold=2):
  """An ESC-50 layout (meta/esc50.csv, audio/*.wav: 5 s, 44.1 kHz, mono, 16 bit) of a few
  classes, each class a noise of its own spectral tilt."""
  import soundfile
  rng = np.random.default_rng(0)
  os.makedirs(os.path.join(root, "audio"))
  os.makedirs(os.path.join(root, "meta"))
  rows = ["filename,fold,target,category,esc10,src_file,take"]
  for target, category in classes:
    for fold in range(1, 6):
      for take in range(per_fold):
        name = f"{fold}-{100 * target + take}-A-{target}.wav"
        noise = rng.standard_normal(5 * 44100)
        wave = np.fft.irfft(np.fft.rfft(noise) * np.linspace(1, 1 + target, len(noise) // 2 + 1))
        soundfile.write(os.path.join(root, "audio", name), 0.1 * wave / wave.std(), 44100,
                        subtype="PCM_16")
        rows.append(f"{name},{fold},{target},{category},False,{100 * target + take},A")
  with open(os.path.join(root, "meta", "esc50.csv"), "w") as f:
    f.write("\n".join(rows) + "\n")
  return root


def test_fewshot_stage_on_a_tiny_trained_run(data_dir, tmp_path, monkeypatch):
  """The smoke student (configs/common.py `smoke`, 10 epochs of 256 synthetic clips: about 40 %
  closed-set accuracy) on an open set of its 10 scenes and 3 new ones (chance 1/13)."""
  from configs import common as config_common
  from jax_asc import main as main_lib
  from jax_asc.stages import fewshot as stage
  config = config_common.base_config()
  config_common.smoke(config, "student")
  config.data.cache_dir = data_dir
  config.num_epochs = config.eval_every_epochs = 10
  config.stage = "train"
  workdir = str(tmp_path / "run")
  main_lib.run(config, workdir)
  config.stage = "fewshot"
  config.fewshot.update(datasets="synthetic_open,esc50", shots=(2, 5), episodes=10,
                        checkpoint="latest")
  config.fewshot.roots.esc50 = _fake_esc50(str(tmp_path / "esc50"))
  config.fewshot.synthetic_open.update(per_class=12, new_classes=3)
  result = main_lib.run(config, workdir)["fewshot"]
  for suffix in ("json", "md"):
    assert os.path.exists(os.path.join(workdir, "reports", f"fewshot.{suffix}"))
  with open(os.path.join(workdir, "reports", "fewshot.json")) as f:
    assert json.load(f) == json.loads(json.dumps(result))
  data = result["datasets"]["synthetic_open"]
  assert len(data["classes"]) == 13 and len(data["unseen"]) == 3
  chance = 1 / 13
  for k, r in data["shots"].items():
    assert r["episodes"] == 10 and r["support"] == 13 * int(k)
    assert r["test"] == 13 * (12 - int(k))
    for group in ("accuracy", "seen", "unseen"):
      assert 0.0 <= r[group]["mean"] <= 1.0
    assert r["seen"]["classes"] == 10 and r["unseen"]["classes"] == 3
  five = data["shots"]["5"]["accuracy"]
  assert five["mean"] - five["ci95"] > chance       # the model learned something that transfers
  assert 0.0 < data["map"] <= 1.0
  # ESC-50 (read, resampled to 32 kHz, 5-s clips as five 1-s windows): no class seen.
  esc = result["datasets"]["esc50"]
  assert esc["support_pool"] == {"split": "folds1234", "examples": 24}
  assert esc["held_out"] == {"split": "folds5", "examples": 6}
  assert esc["classes"] == esc["unseen"] == ["dog", "rooster", "rain"] and esc["seen"] == []
  for k, r in esc["shots"].items():
    assert r["classes"] == 3 and r["test"] == 6 and 0.0 <= r["accuracy"]["mean"] <= 1.0
    assert r["seen"]["classes"] == 0 and r["seen"]["mean"] is None
  assert 0.0 < esc["map"] <= 1.0
  with open(os.path.join(workdir, "fewshot.done.json")) as f:
    assert "synthetic_open/5shot" in json.load(f)["outputs"]
  # Other shots re-use the cached embeddings: nothing is embedded again.
  monkeypatch.setattr(stage, "_embed", lambda *a, **k: pytest.fail("embedded again"))
  config.fewshot.shots = (3,)
  again = main_lib.run(config, workdir)["fewshot"]["datasets"]
  assert list(again["synthetic_open"]["shots"]) == ["3"]
  assert again["synthetic_open"]["map"] == data["map"] and again["esc50"]["map"] == esc["map"]
