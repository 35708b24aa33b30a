"""Dataset readers on small fake trees in each exact on-disk layout, and every bad-input case."""
import csv
import os

import librosa
import numpy as np
import pytest
import soundfile

from jax_asc import data as data_lib
from jax_asc.data import pipeline
from jax_asc.data.audio_io import BadAudioError
from jax_asc.data.dataset import RowView
from jax_asc.data.formats import MetadataError
from jax_asc.eval import submission


def _tone(seconds, rate, channels=1, seed=0):
  rng = np.random.default_rng(seed)
  n = int(round(seconds * rate))
  t = np.arange(n) / rate
  x = 0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t) + 0.05 * rng.standard_normal(n)
  return np.stack([x * (1 - 0.2 * c) for c in range(channels)], axis=1) if channels > 1 else x


def _wav(path, seconds=1.0, rate=44100, channels=1, subtype="PCM_24", seed=0):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  soundfile.write(path, _tone(seconds, rate, channels, seed).astype(np.float32), rate,
                  subtype=subtype)


def _tsv(path, header, rows, delimiter="\t"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", newline="") as f:
    w = csv.writer(f, delimiter=delimiter, lineterminator="\n")
    if header:
      w.writerow(header)
    w.writerows(rows)


TAU_FILES = [  # scene, city, location, device
    ("airport", "lisbon", 1000, "a"), ("bus", "lyon", 1095, "b"), ("metro", "paris", 1100, "c"),
    ("park", "vienna", 1001, "s1"), ("tram", "milan", 1002, "s2"), ("airport", "lisbon", 1000, "s4"),
    ("street_traffic", "london", 1003, "s6"), ("public_square", "prague", 1004, "a"),
]


def _tau22_tree(root, seconds=1.0, with_sub=True):
  meta = []
  for i, (scene, city, loc, dev) in enumerate(TAU_FILES):
    sub = "-0" if with_sub else ""
    name = f"audio/{scene}-{city}-{loc}-{40000 + i}{sub}-{dev}.wav"
    _wav(os.path.join(root, name), seconds, seed=i)
    meta.append([name, scene, f"{city}-{loc}", dev])
  _tsv(os.path.join(root, "meta.csv"), ["filename", "scene_label", "identifier", "source_label"],
       meta)
  setup = os.path.join(root, "evaluation_setup")
  train = [m for m in meta if m[3] in ("a", "b", "c", "s1", "s2")]
  test = [m for m in meta if m not in train[:3]]
  _tsv(os.path.join(setup, "fold1_train.csv"), ["filename", "scene_label"],
       [m[:2] for m in train])
  _tsv(os.path.join(setup, "fold1_evaluate.csv"), ["filename", "scene_label"],
       [m[:2] for m in test])
  _tsv(os.path.join(setup, "fold1_test.csv"), ["filename"], [m[:1] for m in test])
  _tsv(os.path.join(root, "splits", "split25.csv"), ["filename"], [m[:1] for m in train[:3]])
  _tsv(os.path.join(root, "splits", "test.csv"), ["filename", "scene_label"],
       [m[:2] for m in test])
  return meta


class _Cfg(dict):
  __getattr__ = dict.__getitem__


def _cfg(name, root, cache, **kw):
  # librosa's resampler, which the checks below compare with (sinc_hann: test_data_parity.py)
  base = dict(name=name, root=root, split_dir="", sample_rate=32000, cache_dir=cache,
              skip_bad_files=False, tut17_fold=1, cache_dtype="float16", resampler="soxr_hq")
  base.update(kw)
  return _Cfg(base)


def test_tau22_splits_labels_devices_and_resampling(tmp_path):
  root, cache = str(tmp_path / "tau"), str(tmp_path / "cache")
  meta = _tau22_tree(root)
  cfg = _cfg("tau22", root, cache, split_dir=os.path.join(root, "splits"))
  splits = data_lib.load_splits(cfg, ["fold1_train", "fold1_evaluate", "split25", "test"])
  train = splits["fold1_train"]
  rows = [meta[i] for i in (0, 1, 2, 3, 4, 7)]   # devices a, b, c, s1, s2 in fold1_train
  assert len(train) == 6 and train["waveform"].shape == (6, 1, 32000)
  assert [train.classes[l] for l in train["label"]] == [m[1] for m in rows]
  assert [train.devices[d] for d in train["recording_device"]] == ["a", "b", "c", "s1", "s2", "a"]
  assert list(train["identifier"]) == [m[2] for m in rows]
  assert len(splits["split25"]) == 3
  test_devices = {splits["test"].devices[d] for d in splits["test"]["recording_device"]}
  assert {"s4", "s6"} <= test_devices
  # resampled once, 44.1 → 32 kHz, as librosa does (float16 cache)
  raw, rate = soundfile.read(os.path.join(root, meta[0][0]), dtype="float32")
  expected = librosa.resample(raw, orig_sr=rate, target_sr=32000)[:32000]
  np.testing.assert_allclose(train.audio("waveform", [0])[0, 0], expected, atol=2e-3)
  exact = data_lib.load_splits(_cfg("tau22", root, cache, cache_dtype="float32"),
                               ["fold1_train"])["fold1_train"]
  assert exact["waveform"].dtype == np.float32
  np.testing.assert_allclose(exact.audio("waveform", [0])[0, 0], expected, atol=1e-5)
  # and read back from the cache
  again = data_lib.load_splits(cfg, ["fold1_train"])["fold1_train"]
  np.testing.assert_array_equal(again["waveform"], train["waveform"])
  assert len(os.listdir(os.path.join(cache, "tau2022_mobile"))) == 5
  # the fold1_test list is unlabelled in its file but meta.csv has the labels
  assert (data_lib.load_splits(cfg, ["fold1_test"])["fold1_test"]["label"] >= 0).all()


def test_tau22_batches_through_the_pipeline(tmp_path):
  root = str(tmp_path / "tau")
  _tau22_tree(root)
  split = data_lib.load_splits(_cfg("tau22", root, str(tmp_path / "c")),
                               ["fold1_evaluate"])["fold1_evaluate"]
  seen = []
  for batch in pipeline.eval_batches(split, global_batch=4):
    assert batch["waveform"].shape == (4, 1, 32000) and batch["waveform"].dtype == np.float32
    seen += batch["index"][batch["mask"]].tolist()
  assert sorted(seen) == sorted(split.index.tolist())


def test_tau20_ten_second_clips_and_dcase25_evaluation(tmp_path):
  root = str(tmp_path / "tau20")
  _tau22_tree(root, seconds=10.0, with_sub=False)
  split = data_lib.load_splits(_cfg("tau20", root, str(tmp_path / "c")),
                               ["fold1_evaluate"])["fold1_evaluate"]
  assert split["waveform"].shape == (len(split), 1, 320000)
  eval_root = str(tmp_path / "eval25")
  rows = [["audio/0.wav", "a"], ["audio/1.wav", "unknown"], ["audio/2.wav", "s3"]]
  for name, _ in rows:
    _wav(os.path.join(eval_root, name), 1.0, seed=3)
  _tsv(os.path.join(eval_root, "evaluation_setup", "fold1_test.csv"), ["filename", "device_id"],
       rows)
  ev = data_lib.load_splits(_cfg("dcase25_eval", eval_root, str(tmp_path / "c")), ["test"])["test"]
  assert list(ev["label"]) == [-1, -1, -1]
  assert [ev.devices[d] for d in ev["recording_device"]] == ["a", "unknown", "s3"]


def test_tut17_stereo_headerless_folds(tmp_path):
  root = str(tmp_path / "tut")
  rows = [("audio/b020_90_100.wav", "beach", "b020"), ("audio/c011_0_10.wav", "cafe/restaurant",
                                                       "c011"), ("audio/h003_10_20.wav", "home",
                                                                 "h003")]
  for i, (name, _, _) in enumerate(rows):
    _wav(os.path.join(root, name), 10.0, channels=2, seed=i)
  _tsv(os.path.join(root, "meta.txt"), None, rows)
  _tsv(os.path.join(root, "evaluation_setup", "fold1_train.txt"), None, [r[:2] for r in rows[:2]])
  _tsv(os.path.join(root, "evaluation_setup", "fold1_evaluate.txt"), None, [rows[2][:2]])
  _tsv(os.path.join(root, "evaluation_setup", "fold1_test.txt"), None, [rows[2][:1]])
  splits = data_lib.load_splits(_cfg("tut17", root, str(tmp_path / "c")), ["train", "test"])
  assert [splits["train"].classes[l] for l in splits["train"]["label"]] == ["beach",
                                                                            "cafe/restaurant"]
  raw, _ = soundfile.read(os.path.join(root, rows[0][0]), dtype="float32")
  mono = librosa.resample(raw.mean(axis=1), orig_sr=44100, target_sr=32000)
  np.testing.assert_allclose(splits["train"].audio("waveform", [0])[0, 0][:1000], mono[:1000],
                             atol=2e-3)
  assert len(splits["test"]) == 1
  # data.keep_channels: the binaural clips as they are, (N, 2, S), each channel resampled
  stereo = data_lib.load_splits(_cfg("tut17", root, str(tmp_path / "c"), keep_channels=True),
                                ["train"])["train"]
  assert stereo["waveform"].shape == (2, 2, 320000) and stereo.num_channels == 2
  for channel in range(2):
    expected = librosa.resample(raw[:, channel], orig_sr=44100, target_sr=32000)
    np.testing.assert_allclose(stereo.audio("waveform", [0])[0, channel, :1000],
                               expected[:1000], atol=2e-3)
  batch = next(pipeline.eval_batches(stereo, global_batch=2))
  assert batch["waveform"].shape == (2, 2, 320000)


def test_icme24_keeps_unlabelled_rows_and_matches_by_glob(tmp_path):
  root = str(tmp_path / "icme")
  rows = [["40c85707_1", "Bus"], ["9f1a2b3c_2", ""], ["aa11bb22_0", "Urban park"],
          ["cc33dd44_5", ""]]
  for i, (name, _) in enumerate(rows):
    _wav(os.path.join(root, "data", "ICME2024_GC_ASC_dev", f"dev_{name}.wav"), 10.0,
         rate=48000 if i % 2 else 44100, subtype="PCM_16", seed=i)
  _tsv(os.path.join(root, "data", "ICME2024_ASC_dev_label.csv"), ["filename", "scene_label"],
       rows, delimiter=",")
  cfg = _cfg("icme24", root, str(tmp_path / "c"), sample_rate=16000)
  splits = data_lib.load_splits(cfg, ["all", "labelled", "unlabelled"])
  assert list(splits["all"]["label"]) == [0, -1, 6, -1]
  assert list(splits["labelled"].filename) == ["40c85707_1", "aa11bb22_0"]
  assert len(splits["unlabelled"]) == 2 and splits["all"]["waveform"].shape == (4, 1, 160000)


def test_esc50_folds(tmp_path):
  root = str(tmp_path / "esc")
  rows = [["1-100032-A-0.wav", "1", "0", "dog", "True", "100032", "A"],
          ["2-10001-A-49.wav", "2", "49", "hand_saw", "False", "10001", "A"],
          ["5-9032-A-0.wav", "5", "0", "dog", "True", "9032", "A"]]
  for i, r in enumerate(rows):
    _wav(os.path.join(root, "audio", r[0]), 5.0, subtype="PCM_16", seed=i)
  _tsv(os.path.join(root, "meta", "esc50.csv"),
       ["filename", "fold", "target", "category", "esc10", "src_file", "take"], rows,
       delimiter=",")
  cfg = _cfg("esc50", root, str(tmp_path / "c"))
  splits = data_lib.load_splits(cfg, ["folds1234", "fold5"])
  assert list(splits["folds1234"]["label"]) == [0, 49] and list(splits["fold5"]["label"]) == [0]
  assert splits["fold5"]["waveform"].shape == (1, 1, 160000)


# ----------------------------------------------------------------------------- bad input
@pytest.fixture
def tau_root(tmp_path):
  root = str(tmp_path / "tau")
  meta = _tau22_tree(root)
  return root, meta


def _load(root, tmp_path, split="fold1_train", **kw):
  return data_lib.load_splits(_cfg("tau22", root, str(tmp_path / "cache"), **kw), [split])[split]


def _file(root, meta, i):
  return os.path.join(root, meta[i][0])


@pytest.mark.parametrize("damage,problem", [
    ("missing", "missing on disk"),
    ("empty", "empty file"),
    ("truncated", "truncated"),
    ("corrupt", "unreadable or corrupt"),
    ("nan", "NaN or infinite"),
    ("stereo", "2 channel(s), expected 1"),
    ("rate", "sample rate 48000 Hz, expected 44100 Hz"),
    ("short", "expected 1.0 s"),
])
def test_each_bad_file_is_named_or_skipped_with_a_record(tau_root, tmp_path, damage, problem):
  root, meta = tau_root
  path = _file(root, meta, 1)
  if damage == "missing":
    os.remove(path)
  elif damage == "empty":
    open(path, "w").close()
  elif damage == "truncated":
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
  elif damage == "corrupt":
    open(path, "wb").write(os.urandom(5000))
  elif damage == "nan":
    x = _tone(1.0, 44100).astype(np.float32)
    x[100] = np.nan
    soundfile.write(path, x, 44100, subtype="FLOAT")
  elif damage == "stereo":
    _wav(path, channels=2)
  elif damage == "rate":
    _wav(path, rate=48000)
  elif damage == "short":
    _wav(path, seconds=0.5)
  with pytest.raises(BadAudioError) as error:
    _load(root, tmp_path)
  assert meta[1][0].split("/")[-1] in str(error.value) and problem in str(error.value)
  split = _load(root, tmp_path, skip_bad_files=True)
  assert len(split) == 5 and meta[1][0] not in list(split.filename)
  assert split.skipped[0][0] == meta[1][0] and problem in split.skipped[0][1]
  assert list(split.index) == [0, 2, 3, 4, 5]   # stable indices: the bad row leaves a gap
  from jax_asc.stages import common
  common.record_skipped(str(tmp_path / "wd"), [split])
  assert meta[1][0] in open(tmp_path / "wd" / "skipped_files.json").read()


def test_metadata_errors_name_file_and_row(tau_root, tmp_path):
  root, meta = tau_root
  meta_path = os.path.join(root, "meta.csv")
  original = open(meta_path).read()
  header = ["filename", "scene_label", "identifier", "source_label"]
  _tsv(meta_path, header, [meta[0], meta[1], meta[0]])
  with pytest.raises(MetadataError, match=r"meta.csv, row 4: duplicate filename"):
    _load(root, tmp_path)
  _tsv(meta_path, header, [meta[0], [meta[1][0], "beach", meta[1][2], meta[1][3]]])
  with pytest.raises(MetadataError, match=r"meta.csv, row 3: label 'beach'"):
    _load(root, tmp_path)
  open(meta_path, "w").write(original)
  split_path = os.path.join(root, "evaluation_setup", "fold1_train.csv")
  _tsv(split_path, ["filename", "scene_label"], [meta[0][:2], ["audio/ghost-a.wav", "bus"]])
  with pytest.raises(MetadataError, match=r"fold1_train.csv: 1 file\(s\) not in the dataset"):
    _load(root, tmp_path)
  _tsv(split_path, ["filename", "scene_label"], [meta[0][:2], meta[0][:2]])
  with pytest.raises(MetadataError, match="fold1_train.csv, row 3: duplicate"):
    _load(root, tmp_path)
  _tsv(split_path, ["name"], [meta[0][:1]])
  with pytest.raises(MetadataError, match=r"lacks column\(s\) \['filename'\]"):
    _load(root, tmp_path)
  with pytest.raises(MetadataError, match="split5 … split100"):
    _load(root, tmp_path, split="fold2_train")
  with pytest.raises(ValueError, match="data.root"):
    data_lib.load_splits(_cfg("tau22", "", str(tmp_path)), ["fold1_train"])
  with pytest.raises(ValueError, match="data.name must be one of"):
    data_lib.load_splits(_cfg("tau23", root, str(tmp_path)), ["fold1_train"])


def test_submission_file(tmp_path):
  path = str(tmp_path / "output.csv")
  logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
  submission.write_submission(path, ["audio/0.wav", "audio/1.wav"], logits, ["x", "y", "z"])
  rows = list(csv.reader(open(path), delimiter="\t"))
  assert rows[0] == ["filename", "scene_label", "x", "y", "z"]
  assert rows[1][:2] == ["audio/0.wav", "x"] and rows[2][1] == "z"
  assert abs(sum(float(v) for v in rows[1][2:]) - 1.0) < 1e-5
  with pytest.raises(ValueError, match="expected"):
    submission.write_submission(path, ["a"], logits, ["x", "y", "z"])
  assert submission.validate_submission(path, ["audio/0.wav", "audio/1.wav"], ["x", "y", "z"]) == 2
  with pytest.raises(ValueError, match=r"2 rows, expected one per listed file \(3\)"):
    submission.validate_submission(path, ["audio/0.wav", "audio/1.wav", "audio/2.wav"],
                                   ["x", "y", "z"])
  with pytest.raises(ValueError, match=r"line 2: filename 'audio/0.wav', expected 'audio/1.wav'"):
    submission.validate_submission(path, ["audio/1.wav", "audio/0.wav"], ["x", "y", "z"])
  with pytest.raises(ValueError, match="header is"):
    submission.validate_submission(path, ["audio/0.wav", "audio/1.wav"], ["x", "z", "y"])
  bad = rows[:2] + [["audio/1.wav", "z", "0.5", "0.1", "0.1"]]
  with open(path, "w") as f:
    f.write("".join("\t".join(r) + "\n" for r in bad))
  with pytest.raises(ValueError, match="line 3: probabilities sum to 0.700000, expected 1"):
    submission.validate_submission(path, ["audio/0.wav", "audio/1.wav"], ["x", "y", "z"])
  bad[2] = ["audio/1.wav", "z", "0.8", "0.1", "0.1"]
  with open(path, "w") as f:
    f.write("".join("\t".join(r) + "\n" for r in bad))
  with pytest.raises(ValueError, match="line 3: scene_label 'z' is not the most probable class 'x'"):
    submission.validate_submission(path, ["audio/0.wav", "audio/1.wav"], ["x", "y", "z"])


def test_submission_routing_by_device(tmp_path):
  from jax_asc.stages import submit
  routes = submit.route(["a", "unknown", "s2", "a"], ["a", "b", "s2"])
  assert {k: v.tolist() for k, v in routes.items()} == {"": [1], "a": [0, 3], "s2": [2]}
  with pytest.raises(ValueError, match=r"names device\(s\) \['s7'\] \(first at rows \{'s7': 1\}\) "
                                       r"for which this run has no device-specific model"):
    submit.route(["a", "s7"], ["a", "b"])
  with pytest.raises(FileNotFoundError, match="run stage finetune_device first, or set "
                                              "submission.routing='general'"):
    submit.tuned_devices(str(tmp_path))


def test_tau_device_suffix_must_match_source_label(tau_root, tmp_path):
  root, meta = tau_root
  header = ["filename", "scene_label", "identifier", "source_label"]
  rows = [list(m) for m in meta]
  rows[2][3] = "s3"   # file …-c.wav, metadata says s3: line 4 of meta.csv (after the header)
  _tsv(os.path.join(root, "meta.csv"), header, rows)
  with pytest.raises(MetadataError) as error:
    _load(root, tmp_path)
  message = str(error.value)
  assert "meta.csv, row 4:" in message and meta[2][0] in message
  assert "'c'" in message and "source_label is 's3'" in message


def test_tau20_segments_are_views_of_the_cached_clips(tmp_path):
  root, cache = str(tmp_path / "tau20"), str(tmp_path / "c")
  _tau22_tree(root, seconds=10.0, with_sub=False)
  whole = data_lib.load_splits(_cfg("tau20", root, cache), ["fold1_train"])["fold1_train"]
  seg = data_lib.load_splits(_cfg("tau20", root, cache, segment_seconds=1.0),
                             ["fold1_train"])["fold1_train"]
  assert seg["waveform"].shape == (10 * len(whole), 1, 32000) and seg.num_samples == 32000
  assert seg.filename[:2].tolist() == [f"{whole.filename[0]}@0", f"{whole.filename[0]}@1"]
  assert seg.index.tolist() == [10 * i + k for i in whole.index for k in range(10)]
  # a lazy view of the memory-mapped cache, not a copy in memory
  assert isinstance(seg["waveform"], RowView) and isinstance(seg["waveform"].base, np.memmap)
  for i in range(len(whole)):
    np.testing.assert_array_equal(seg["waveform"][10 * i + 3],
                                  whole["waveform"][i, :, 96000:128000])
    assert seg["label"][10 * i + 9] == whole["label"][i]
    assert seg["identifier"][10 * i] == whole["identifier"][i]
  with pytest.raises(ValueError, match=r"segment_seconds=3.0: the clips of tau2020_mobile/"
                                       r"fold1_train are 320000 samples \(10 s at 32000 Hz\), "
                                       r"not a whole multiple"):
    data_lib.load_splits(_cfg("tau20", root, cache, segment_seconds=3.0), ["fold1_train"])


def test_tau_holdout_by_location_and_fsdd_without_locations(tau_root, tmp_path):
  root, _ = tau_root
  cfg = _cfg("tau22", root, str(tmp_path / "cache"), train_split="fold1_train",
             validation_split="holdout", test_split="fold1_evaluate", holdout_fraction=0.2,
             holdout_seed=0)
  full = _load(root, tmp_path)
  splits = data_lib.load_splits(cfg, ["fold1_train", "holdout"])
  train, held = splits["fold1_train"], splits["holdout"]
  assert len(held) == 1 and len(train) == 5   # 6 locations of one clip each: 1 ≈ 0.2 · 6
  assert sorted(train.filename.tolist() + held.filename.tolist()) == sorted(full.filename)
  assert not set(train["identifier"]) & set(held["identifier"])
  assert set(held.index) | set(train.index) == set(full.index)
  fsdd = str(tmp_path / "fsdd")
  for name in ("3_george_7.wav", "4_theo_9.wav"):
    _wav(os.path.join(fsdd, name), 0.5, rate=8000, subtype="PCM_16")
  fsdd_cfg = _cfg("fsdd", fsdd, str(tmp_path / "cache"), sample_rate=8000, train_split="train",
                  validation_split="holdout", test_split="test")
  with pytest.raises(ValueError, match=r"fsdd gives no recording-location identifiers"):
    data_lib.load_splits(fsdd_cfg, ["holdout"])
