"""TFDS builders (jax_asc/data/tfds_builders.py) on the readers' fake trees and the real FSDD
clips, and data.source = "tfds": the same examples, batches and trained parameters as files."""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import common as config_common
from jax_asc import data as data_lib
from jax_asc import fingerprint
from jax_asc import build_tfds
from jax_asc.data import formats, pipeline, tfds_builders, tfds_source
from jax_asc.data.audio_io import BadAudioError
from test_datasets import TAU_FILES, _tau22_tree, _tsv, _wav

SHARED_FSDD = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "fsdd")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data(name, root, tmp_path, **kw):
  cfg = config_common.base_config().data
  cfg.update(name=name, root=str(root), cache_dir=str(tmp_path / "cache"),
             tfds_dir=str(tmp_path / "tfds"), **kw)
  return cfg


def _assert_same_split(files, records):
  """Every column, the vocabularies and skipped files of two loads of one split agree."""
  assert sorted(files.columns) == sorted(records.columns)
  for name in files.columns:
    a, b = np.asarray(files[name]), np.asarray(records[name])
    assert a.dtype == b.dtype and a.shape == b.shape, name
    np.testing.assert_array_equal(a, b, err_msg=name)
  assert (files.name, files.classes, files.devices, files.sample_rate, files.waveform_scale,
          files.dataset, list(files.skipped)) == (
              records.name, records.classes, records.devices, records.sample_rate,
              records.waveform_scale, records.dataset, list(records.skipped))


def _assert_same_batches(files, records, *, global_batch, start_step, steps, hosts=1):
  """Every host's training batches of `steps` global steps from `start_step` agree."""
  epochs = -(-(start_step + steps) // pipeline.steps_per_epoch(len(files), global_batch))
  for host in range(hosts):
    batches = [list(pipeline.train_batches(split, global_batch=global_batch, seed=3,
                                           start_step=start_step, process_index=host,
                                           process_count=hosts, num_epochs=epochs))
               for split in (files, records)]
    assert len(batches[0]) == len(batches[1]) >= steps
    for a, b in zip(*batches):
      assert sorted(a) == sorted(b)
      for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _both(cfg, splits):
  """The named splits from files and from the records built of `cfg`."""
  files = data_lib.load_splits(cfg, splits)
  cfg.source = "tfds"
  records = data_lib.load_splits(cfg, splits)
  cfg.source = "files"
  return files, records


def _tau22_root(tmp_path):
  root = tmp_path / "tau22"
  _tau22_tree(str(root))
  for name in ("split25.csv", "test.csv"):   # the DCASE24 split files, beside meta.csv
    shutil.copy(root / "splits" / name, root / name)
  return root


def test_tau22_builder_splits_features_metadata_and_the_same_examples(tmp_path):
  cfg = _data("tau22", _tau22_root(tmp_path), tmp_path)
  builder = build_tfds.build(cfg, cfg.tfds_dir)
  info = builder.info
  assert builder.builder_config.name == "32000hz" and info.version == "1.0.0"
  assert "1.0.0" in builder.RELEASE_NOTES and "zenodo" in builder.MANUAL_DOWNLOAD_INSTRUCTIONS
  assert {n: s.num_examples for n, s in info.splits.items()} == {
      "fold1_train": 6, "fold1_evaluate": 5, "fold1_test": 5, "split25": 3, "test": 5}
  features = info.features
  assert features["label"].names == list(formats.TAU_CLASSES)
  assert features["recording_device"].names == list(formats.TAU_DEVICES)
  assert features["waveform"].shape == (1, 32000) and features["waveform"].np_dtype == np.float32
  assert info.file_format.value == "array_record"
  names = ["train", "fold1_evaluate", "fold1_test", "split25", "test"]
  files, records = _both(cfg, names)
  for name in names:
    _assert_same_split(files[name], records[name])
  # a row of a raw record: its own labels, in row order
  source = builder.as_data_source("split25")
  assert source[2]["filename"].decode() == files["split25"].filename[2]
  assert int(source[2]["label"]) == int(files["split25"]["label"][2])
  # the holdout split is derived from the records as from files
  cfg.update(train_split="split25", validation_split="holdout", holdout_fraction=0.34)
  files, records = _both(cfg, ["split25", "holdout"])
  for name in ("split25", "holdout"):
    _assert_same_split(files[name], records[name])


def test_tau20_whole_clips_and_segments_configs_give_the_files_segments(tmp_path):
  root = tmp_path / "tau20"
  _tau22_tree(str(root), seconds=10.0, with_sub=False)
  cfg = _data("tau20", root, tmp_path, sample_rate=16000)
  whole = build_tfds.build(cfg, cfg.tfds_dir)
  assert whole.builder_config.name == "16000hz"
  assert whole.info.features["waveform"].shape == (1, 160000)
  cfg.segment_seconds = 1.0
  files, from_whole = _both(cfg, ["fold1_train"])   # whole clips cut at load time
  _assert_same_split(files["fold1_train"], from_whole["fold1_train"])
  # shuffled training batches pick several pieces of one record
  _assert_same_batches(files["fold1_train"], from_whole["fold1_train"], global_batch=16,
                       start_step=2, steps=6)
  segments = build_tfds.build(cfg, cfg.tfds_dir)
  assert segments.builder_config.name == "16000hz_seg1s"
  assert segments.info.splits["fold1_train"].num_examples == 60
  assert segments.info.features["waveform"].shape == (1, 16000)
  _, from_segments = _both(cfg, ["fold1_train"])    # the segments config, now built
  _assert_same_split(files["fold1_train"], from_segments["fold1_train"])
  assert isinstance(from_segments["fold1_train"]["waveform"], tfds_source.RecordColumn)
  assert from_segments["fold1_train"].filename[11] == files["fold1_train"].filename[11]


def test_dcase25_eval_tut17_icme24_esc50_builders(tmp_path):
  # dcase25 evaluation: unlabelled (−1), device_id as recording_device
  root = tmp_path / "eval25"
  rows = [["audio/0.wav", "a"], ["audio/1.wav", "unknown"], ["audio/2.wav", "s3"]]
  for name, _ in rows:
    _wav(str(root / name), 1.0, seed=3)
  _tsv(str(root / "evaluation_setup" / "fold1_test.csv"), ["filename", "device_id"], rows)
  cfg = _data("dcase25_eval", root, tmp_path)
  build_tfds.build(cfg, cfg.tfds_dir)
  files, records = _both(cfg, ["test"])
  _assert_same_split(files["test"], records["test"])
  assert list(records["test"]["label"]) == [-1, -1, -1]
  # TUT17: the folds' lists as splits fold<k>_*, binaural with keep_channels
  root = tmp_path / "tut"
  rows = [("audio/b020_90_100.wav", "beach", "b020"), ("audio/c011_0_10.wav", "cafe/restaurant",
                                                       "c011"), ("audio/h003_10_20.wav", "home",
                                                                 "h003")]
  for i, (name, _, _) in enumerate(rows):
    _wav(str(root / name), 10.0, channels=2, seed=i)
  _tsv(str(root / "meta.txt"), None, rows)
  for fold, (train, held) in {1: (rows[:2], rows[2:]), 2: (rows[1:], rows[:1])}.items():
    _tsv(str(root / "evaluation_setup" / f"fold{fold}_train.txt"), None, [r[:2] for r in train])
    _tsv(str(root / "evaluation_setup" / f"fold{fold}_evaluate.txt"), None, [r[:2] for r in held])
  cfg = _data("tut17", root, tmp_path, keep_channels=True, tut17_fold=2)
  builder = build_tfds.build(cfg, cfg.tfds_dir)
  assert builder.builder_config.name == "32000hz_channels"
  assert sorted(builder.info.splits) == ["fold1_evaluate", "fold1_train", "fold2_evaluate",
                                         "fold2_train"]
  files, records = _both(cfg, ["train", "evaluate"])
  for name in ("train", "evaluate"):
    _assert_same_split(files[name], records[name])
  assert records["train"]["waveform"].shape == (2, 2, 320000)
  # ICME24: all / labelled / unlabelled
  root = tmp_path / "icme"
  rows = [["40c85707_1", "Bus"], ["9f1a2b3c_2", ""], ["aa11bb22_0", "Urban park"]]
  for i, (name, _) in enumerate(rows):
    _wav(str(root / "data" / "ICME2024_GC_ASC_dev" / f"dev_{name}.wav"), 10.0,
         rate=48000 if i % 2 else 44100, subtype="PCM_16", seed=i)
  _tsv(str(root / "data" / "ICME2024_ASC_dev_label.csv"), ["filename", "scene_label"], rows,
       delimiter=",")
  cfg = _data("icme24", root, tmp_path, sample_rate=16000)
  builder = build_tfds.build(cfg, cfg.tfds_dir)
  assert sorted(builder.info.splits) == ["development", "labelled", "unlabelled"]
  files, records = _both(cfg, ["all", "labelled", "unlabelled"])
  for name in files:
    _assert_same_split(files[name], records[name])
  assert list(records["all"]["label"]) == [0, -1, 6]
  # ESC-50: five fold splits; a run's folds1234 joins four of them as the files source lists
  # them (the csv's order, here not fold by fold) with its ids (a skipped file leaves a gap)
  root = tmp_path / "esc"
  folds = (2, 1, 4, 1, 5, 3, 2, 4)
  rows = [[f"{k}-1000{i}-A-{i}.wav", str(k), str(i), formats.ESC50_CLASSES[i], "False",
           f"1000{i}", "A"] for i, k in enumerate(folds)]
  for i, r in enumerate(rows):
    _wav(str(root / "audio" / r[0]), 5.0, subtype="PCM_16", seed=i)
  open(root / "audio" / rows[3][0], "wb").write(os.urandom(3000))   # fold 1's second
  _tsv(str(root / "meta" / "esc50.csv"),
       ["filename", "fold", "target", "category", "esc10", "src_file", "take"], rows,
       delimiter=",")
  cfg = _data("esc50", root, tmp_path, skip_bad_files=True)
  builder = build_tfds.build(cfg, cfg.tfds_dir)
  assert sorted(builder.info.splits) == [f"fold{k}" for k in range(1, 6)]
  files, records = _both(cfg, ["folds1234", "fold5", "fold1"])
  for name in files:
    _assert_same_split(files[name], records[name])
  assert list(records["folds1234"].index) == [0, 1, 2, 4, 5, 6]
  assert records["folds1234"].name == "folds1234" and len(records["folds1234"].skipped) == 1
  cfg.segment_seconds = 2.5   # the same with segments cut from the joined records
  files, records = _both(cfg, ["folds1234"])
  _assert_same_split(files["folds1234"], records["folds1234"])


@pytest.mark.skipif(not os.path.isdir(SHARED_FSDD), reason="needs ../shared/data/fsdd")
def test_fsdd_builder_on_the_real_clips(tmp_path):
  root = tmp_path / "fsdd"
  root.mkdir()
  names = sorted(os.listdir(SHARED_FSDD))
  picked = [n for n in names if n.split("_")[1] in ("george", "theo")
            and int(n.split("_")[2][:-4]) in (0, 1, 5, 6)][:24]
  for name in picked:
    os.symlink(os.path.join(os.path.abspath(SHARED_FSDD), name), root / name)
  cfg = _data("fsdd", root, tmp_path, sample_rate=8000)
  builder = build_tfds.build(cfg, cfg.tfds_dir)
  assert builder.builder_config.name == "8000hz"
  assert builder.info.features["recording_device"].names == list(tfds_builders.Fsdd.DEVICES)
  files, records = _both(cfg, ["train", "test"])
  assert len(files["train"]) + len(files["test"]) == len(picked)
  for name in files:
    _assert_same_split(files[name], records[name])


def test_bad_files_are_named_or_skipped_and_listed_in_the_metadata(tmp_path):
  root = _tau22_root(tmp_path)
  bad = TAU_FILES[1]
  name = f"audio/{bad[0]}-{bad[1]}-{bad[2]}-40001-0-{bad[3]}.wav"
  open(root / name, "wb").write(os.urandom(5000))
  cfg = _data("tau22", root, tmp_path)
  with pytest.raises(BadAudioError, match=name.split("/")[-1]):
    build_tfds.build(cfg, cfg.tfds_dir)
  cfg.skip_bad_files = True
  builder = build_tfds.build(cfg, cfg.tfds_dir)
  assert builder.builder_config.name == "32000hz_skip_bad_files"
  stored = builder.info.metadata["splits"]["fold1_train"]
  assert [item[0] for item in stored["skipped"]] == [name]
  assert stored["skipped"][0][1].startswith("unreadable or corrupt")
  assert name not in stored["filename"] and builder.info.splits["fold1_train"].num_examples == 5
  files, records = _both(cfg, ["train"])
  _assert_same_split(files["train"], records["train"])
  assert list(records["train"].index) == [0, 2, 3, 4, 5]   # the bad row's id stays unused


def test_tfds_source_errors_name_what_is_missing(tmp_path, capsys):
  root = tmp_path / "tau22"
  _tau22_tree(str(root))   # the DCASE24 split files in data.split_dir
  cfg = _data("tau22", root, tmp_path, source="tfds", split_dir=str(root / "splits"))
  with pytest.raises(FileNotFoundError,
                     match=r"jax_asc_tau22 with config 32000hz .*python -m jax_asc.build_tfds"):
    data_lib.load_splits(cfg, ["train"])
  build_tfds.build(cfg, cfg.tfds_dir)
  assert len(data_lib.load_splits(cfg, ["split25"])["split25"]) == 3
  build_tfds.build(cfg, cfg.tfds_dir)   # built: kept, and said so
  assert "already built: kept" in capsys.readouterr().out
  build_tfds.build(cfg, cfg.tfds_dir, overwrite=True)
  assert "already built" not in capsys.readouterr().out
  with pytest.raises(KeyError, match=r"fold1_evaluate.*split 'split5'"):
    data_lib.load_splits(cfg, ["split5"])
  cfg.tfds_dir = ""
  with pytest.raises(ValueError, match="needs data.tfds_dir"):
    data_lib.load_splits(cfg, ["train"])
  cfg.update(tfds_dir=str(tmp_path / "tfds"), source="tfrecords")
  with pytest.raises(ValueError, match=r"data.source must be one of \('files', 'tfds'\)"):
    data_lib.load_splits(cfg, ["train"])
  # records that disagree with the metadata are an error, never a wrong label
  cfg.source = "tfds"
  split = data_lib.load_splits(cfg, ["train"])["train"]
  column = split["waveform"]
  shuffled = tfds_source.RecordColumn(column.source, "waveform", column.shape[1:], column.dtype,
                                      column.filenames[::-1], "test")
  with pytest.raises(ValueError, match="record 0 is .* rebuild the dataset"):
    shuffled[[0]]
  # a config whose name does not say its settings
  with pytest.raises(ValueError, match="expected '16000hz'"):
    tfds_builders.AudioConfig(name="32000hz", sample_rate=16000)


def test_hosts_read_their_rows_of_each_global_batch_from_the_records(tmp_path, data_dir):
  from configs import quickstart
  cfg = quickstart.get_config("tiny").data
  cfg.tfds_dir = str(tmp_path / "tfds")
  build_tfds.build(cfg, cfg.tfds_dir)
  files, records = _both(cfg, ["train", "test"])
  _assert_same_split(files["train"], records["train"])
  _assert_same_batches(files["train"], records["train"], global_batch=16, start_step=5,
                       steps=7, hosts=2)   # from mid-epoch
  evaluated = [b["index"][b["mask"]] for b in pipeline.eval_batches(records["test"],
                                                                    global_batch=16)]
  assert sorted(np.concatenate(evaluated).tolist()) == sorted(files["test"].index.tolist())


def test_quickstart_trains_to_the_same_parameters_from_tfds_as_from_files(tmp_path, data_dir):
  from configs import quickstart
  from jax_asc import main as main_lib
  from jax_asc.stages import common
  config = quickstart.get_config("tiny")
  config.data.cache_dir = data_dir
  config.stage = "train"
  config.num_epochs = 1
  tfds_dir = str(tmp_path / "tfds")
  # the command line the README gives
  done = subprocess.run([sys.executable, "-m", "jax_asc.build_tfds", "--config",
                         "configs/quickstart.py:tiny", "--data_dir", tfds_dir],
                        cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, JAX_ASC_DATA_DIR=data_dir))
  assert done.returncode == 0, done.stderr[-3000:]
  assert "{'train': 64, 'validation': 24, 'test': 36}" in done.stdout
  params = {}
  for source in ("files", "tfds"):
    config.data.update(source=source, tfds_dir=tfds_dir if source == "tfds" else "")
    workdir = str(tmp_path / source)
    main_lib.run(config, workdir)
    variables, _ = common.restore_variables(config, workdir, "latest")
    params[source] = jax.device_get(variables)
  assert jax.tree.structure(params["files"]) == jax.tree.structure(params["tfds"])
  leaves = jax.tree.leaves(params["files"])
  assert len(leaves) > 10
  for a, b in zip(leaves, jax.tree.leaves(params["tfds"])):
    np.testing.assert_array_equal(a, b)
  first = json.load(open(tmp_path / "files" / "config.json"))
  assert first["data"]["source"] == "files"


def test_fingerprint_ignores_the_new_data_keys_at_their_neutral_values():
  from configs import quickstart
  config = quickstart.get_config("tiny")
  cfg = json.loads(config.to_json_best_effort(sort_keys=True))
  for path in fingerprint.NEUTRAL:   # as the configs were before these keys
    parent = cfg
    for key in path[:-1]:
      parent = parent[key]
    del parent[path[-1]]
  before_the_keys = fingerprint.of_json(json.dumps(cfg))
  assert fingerprint.config_fingerprint(config) == before_the_keys
  config.data.source = "tfds"
  assert fingerprint.config_fingerprint(config) != before_the_keys
  assert (fingerprint.section_fingerprints(config)["data"]
          != fingerprint.section_fingerprints(quickstart.get_config("tiny"))["data"])
