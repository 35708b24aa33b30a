"""Splits derived at load time (jax_asc/data/derived.py): segments of long clips, the validation
holdout by recording location, the test-selection guard, and the tables' note on such runs."""
import json
import os

import numpy as np
import pytest

from jax_asc import data as data_lib
from jax_asc.data import derived
from jax_asc.data.dataset import RowView, Split
from jax_asc.eval import tables


def _split(n=200, samples=8, locations=37, seed=0, identifier=True, name="fold1_train"):
  """n examples of `samples` samples at 4 Hz over `locations` locations of uneven size."""
  rng = np.random.default_rng(seed)
  where = np.sort(rng.integers(0, locations, n))   # uneven group sizes
  columns = dict(
      waveform=np.arange(n * samples, dtype=np.float32).reshape(n, 1, samples),
      label=(where % 10).astype(np.int32), recording_device=(np.arange(n) % 3).astype(np.int32),
      filename=np.array([f"audio/f{i}-a.wav" for i in range(n)]),
      index=(3 * np.arange(n) + 1).astype(np.int32))
  if identifier:
    columns["identifier"] = np.array([f"city-{w}" for w in where])
  return Split(name=name, columns=columns, classes=tuple("abcdefghij"), devices=("a", "b", "c"),
               sample_rate=4, dataset="toy")


# ------------------------------------------------------------------------------------- holdout
def test_holdout_is_grouped_deterministic_complete_and_keeps_indices():
  split = _split()
  train, held = derived.holdout(split, 0.1, seed=0)
  assert train.name == "fold1_train" and held.name == "holdout"
  # grouped: no location on both sides
  assert not set(train["identifier"]) & set(held["identifier"])
  # train ∪ holdout = the original, disjoint, each row with its own index and waveform
  assert sorted(train.filename.tolist() + held.filename.tolist()) == sorted(split.filename)
  assert not set(train.filename) & set(held.filename)
  row = {f: i for i, f in enumerate(split.filename)}
  for part in (train, held):
    rows = np.array([row[f] for f in part.filename])
    assert np.all(np.diff(rows) > 0)   # the original order
    for name in split.columns:   # every column follows its rows
      np.testing.assert_array_equal(np.asarray(part[name]), split[name][rows])
  # fraction: within one location of 10 % (the choice moves whole locations)
  largest = np.unique(split["identifier"], return_counts=True)[1].max()
  assert abs(len(held) - 0.1 * len(split)) <= largest
  # deterministic from the seed; another seed holds out other locations
  again = derived.holdout(_split(), 0.1, seed=0)[1]
  assert again.filename.tolist() == held.filename.tolist()
  other = derived.holdout(split, 0.1, seed=1)[1]
  assert set(other["identifier"]) != set(held["identifier"])
  # independent of the rows' order (sorted identifiers, sha256): the same locations
  flipped = split.take(np.arange(len(split))[::-1])
  assert set(derived.holdout(flipped, 0.1, seed=0)[1]["identifier"]) == set(held["identifier"])


def test_holdout_mask_is_fixed_across_processes_and_machines():
  # sha256-ranked groups: no dependence on Python's hash() or NumPy's generators
  mask = derived.holdout_mask(np.array([f"loc-{i % 10}" for i in range(50)]), 0.2, seed=0)
  held = sorted({f"loc-{i % 10}" for i in np.flatnonzero(mask)})
  assert held == ["loc-3", "loc-9"] and mask.sum() == 10   # pinned: sha256("0:loc-…")


def test_holdout_needs_identifiers_and_a_fraction():
  with pytest.raises(ValueError, match=r"toy gives no recording-location identifiers"):
    derived.holdout(_split(identifier=False), 0.1, 0)
  no_ids = _split().with_columns({"identifier": np.array([""] * 200)})
  with pytest.raises(ValueError, match="holdout"):
    derived.holdout(no_ids, 0.1, 0)
  with pytest.raises(ValueError, match=r"data.holdout_fraction must be in \(0, 1\), got 1.5"):
    derived.holdout(_split(), 1.5, 0)


def test_memory_mapped_holdout_reads_rows_on_demand(tmp_path):
  split = _split(n=60)
  path = str(tmp_path / "w.npy")
  np.save(path, split["waveform"])
  split = split.with_columns({"waveform": np.load(path, mmap_mode="r")})
  train, held = derived.holdout(split, 0.25, seed=0)
  wave = train["waveform"]
  assert isinstance(wave, RowView)
  assert wave.shape == (len(train), 1, 8) and wave.dtype == np.float32
  rows = np.array([list(split.filename).index(f) for f in train.filename])
  np.testing.assert_array_equal(train.audio("waveform", [0, 2]), split["waveform"][rows[[0, 2]]])
  np.testing.assert_array_equal(wave[1, 0, 2:5], split["waveform"][rows[1], 0, 2:5])
  np.testing.assert_array_equal(np.asarray(wave), split["waveform"][rows])


# ------------------------------------------------------------------------------------ segments
def test_segments_count_names_indices_and_samples_are_views():
  split = _split(n=5, samples=8)           # 2-s clips at 4 Hz
  seg = derived.segment(split, 0.5)        # 4 segments of 2 samples
  assert len(seg) == 20 and seg.num_samples == 2
  assert seg.filename[:5].tolist() == ["audio/f0-a.wav@0", "audio/f0-a.wav@1", "audio/f0-a.wav@2",
                                       "audio/f0-a.wav@3", "audio/f1-a.wav@0"]
  assert seg.index.tolist() == [4 * i + k for i in split.index for k in range(4)]
  assert seg.index.dtype == np.int32
  for i in range(5):
    for k in range(4):
      np.testing.assert_array_equal(seg["waveform"][4 * i + k],
                                    split["waveform"][i, :, 2 * k:2 * k + 2])
      for name in ("label", "recording_device", "identifier"):
        assert seg[name][4 * i + k] == split[name][i]
  assert isinstance(seg["waveform"], RowView) and seg["waveform"].base is split["waveform"]
  assert derived.segment(split, 2.0) is split              # one segment per clip: unchanged


def test_segment_errors_say_what_was_expected():
  split = _split(n=3, samples=8)
  with pytest.raises(ValueError, match=r"segment_seconds=3.0: .* 8 samples \(2 s at 4 Hz\), shorter"):
    derived.segment(split, 3.0)
  with pytest.raises(ValueError, match=r"not a whole multiple of the segment \(3 samples\)"):
    derived.segment(split, 0.75)
  with pytest.raises(ValueError, match="whole number of samples"):
    derived.segment(split, 0.3)


# ------------------------------------------------------------------ load_splits and selection
class _Cfg(dict):
  __getattr__ = dict.__getitem__


def _synthetic_cfg(data_dir, **kw):
  synth = _Cfg(seed=0, num_train=90, num_validation=18, num_test=90, clip_seconds=0.5)
  cfg = _Cfg(name="synthetic", sample_rate=32000, cache_dir=data_dir, resampler="sinc_hann",
             synthetic=synth, train_split="train", validation_split="holdout", test_split="test",
             selection_split="validation", holdout_fraction=0.2, holdout_seed=0,
             segment_seconds=0.0)
  cfg.update(kw)
  return cfg


def test_load_splits_holds_out_from_train_whatever_is_asked(data_dir):
  full = data_lib.load_splits(_synthetic_cfg(data_dir, validation_split="validation"),
                              ["train"])["train"]
  cfg = _synthetic_cfg(data_dir)
  splits = data_lib.load_splits(cfg, ["train", "holdout", "test"])
  train, held = splits["train"], splits["holdout"]
  assert train.name == "train" and len(train) + len(held) == len(full) == 90
  assert sorted(train.filename.tolist() + held.filename.tolist()) == sorted(full.filename)
  assert not set(train["identifier"]) & set(held["identifier"])
  assert len(splits["test"]) == 90
  # asked alone, each side is the same
  assert data_lib.load_splits(cfg, ["train"])["train"].filename.tolist() == train.filename.tolist()
  assert data_lib.load_splits(cfg, ["holdout"])["holdout"].filename.tolist() == \
      held.filename.tolist()
  # segments first: the same locations held out, every segment of a clip on one side
  seg = data_lib.load_splits(_synthetic_cfg(data_dir, segment_seconds=0.25),
                             ["train", "holdout"])
  assert len(seg["holdout"]) == 2 * len(held) and len(seg["train"]) == 2 * len(train)
  assert set(seg["holdout"]["identifier"]) == set(held["identifier"])
  assert seg["holdout"].index.tolist() == [2 * i + k for i in held.index for k in (0, 1)]
  with pytest.raises(ValueError, match=r"split 'holdout' asked for, but data.validation_split"):
    data_lib.load_splits(_synthetic_cfg(data_dir, validation_split="validation"), ["holdout"])


def test_selection_on_the_test_split_needs_an_explicit_opt_in(data_dir):
  cfg = _synthetic_cfg(data_dir, validation_split="test")
  with pytest.raises(ValueError, match=r"selected on the test split.*"
                                       r"data.selection_split='test'"):
    data_lib.load_splits(cfg, ["train"])
  assert len(data_lib.load_splits(_synthetic_cfg(data_dir, validation_split="test",
                                                 selection_split="test"), ["test"])["test"])
  with pytest.raises(ValueError, match=r"data.selection_split must be one of "
                                       r"\('validation', 'test'\), got 'holdout'"):
    data_lib.check_selection(_synthetic_cfg(data_dir, selection_split="holdout"))


def test_report_configs_select_on_a_holdout():
  from configs import common, cp_mobile_dcase25, report002_teachers
  config = common.base_config()
  assert config.data.selection_split == "validation" and config.data.segment_seconds == 0.0
  assert (config.data.holdout_fraction, config.data.holdout_seed) == (0.1, 0)
  common.tau_dcase25(config, "/data/tau22")
  assert config.data.validation_split == "holdout"
  assert cp_mobile_dcase25.get_config("/data/tau22").data.validation_split == "holdout"
  for role in ("cpr128k_dirfms", "student"):
    cfg = report002_teachers.get_config(f"{role},root=/data/tau20")
    assert cfg.data.validation_split == "holdout" and cfg.data.segment_seconds == 1.0
    assert cfg.data.test_split == cfg.evaluate.split == "fold1_evaluate"
    data_lib.check_selection(cfg.data)
    smoke = report002_teachers.get_config(f"{role},smoke")
    assert smoke.data.segment_seconds == 0.0


# ------------------------------------------------------------------------------------- tables
def _run(root, group, name, data):
  folder = os.path.join(root, group, name)
  os.makedirs(os.path.join(folder, "reports"))
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump({"data": data, "evaluate": {"split": "test"}}, f)
  with open(os.path.join(folder, "reports", "test.json"), "w") as f:
    json.dump({"accuracy": 0.5, "params": 1000}, f)


def test_tables_note_runs_that_selected_on_the_test_split(tmp_path):
  root = str(tmp_path)
  held = dict(validation_split="holdout", test_split="test", selection_split="validation")
  _run(root, "teachers", "cpr128k_dirfms", held)
  _run(root, "students", "cpr128k_dirfms", held)
  assert "selected on the test split" not in tables.write("report002", root)
  _run(root, "teachers", "passt_dirfms", dict(held, validation_split="test",
                                               selection_split="test"))
  _run(root, "students", "passt_dirfms", dict(validation_split="test", test_split="test"))  # old
  text = tables.write("report002", root)
  note = [line for line in text.splitlines() if "selected on the test split" in line]
  assert len(note) == 1 and "passt_dirfms" in note[0] and "cpr128k" not in note[0]
  table_end = max(i for i, line in enumerate(text.splitlines()) if line.startswith("|"))
  assert text.splitlines().index(note[0]) > table_end   # under the table
  with open(os.path.join(root, "tables", "report002.json")) as f:
    assert json.load(f)["selected_on_test"] == ["students/passt_dirfms", "teachers/passt_dirfms"]
  assert os.path.exists(os.path.join(root, "tables", "report002_teachers.png"))


def test_report000_tables_and_plots_before_dsft(tmp_path):
  """Table 1 and its plot from the teachers and ensembles alone (no DSFT report yet)."""
  root = str(tmp_path)
  held = dict(validation_split="holdout", test_split="test", selection_split="validation")
  for name in ("t_ce1", "t_ce2", "t_dafa"):
    _run(root, "teachers", name, held)
  for name in ("t_ce1", "t_ce1+t_dafa"):
    _run(root, "students", name, held)
  text = tables.write("report000", root)
  assert "T_CE1" in text
  pngs = sorted(n for n in os.listdir(os.path.join(root, "tables")) if n.endswith(".png"))
  assert pngs == ["report000_teachers.png"]
