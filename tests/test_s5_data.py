"""Report 004's S5 data: the mixer (levels, dry targets, duplicates), the synthetic set and the
DCASE 2026 Task 4 reader on a small fake tree."""
import json
import os

import ml_collections
import numpy as np
import pytest
import soundfile

from jax_asc import data as data_lib
from jax_asc.data import audio_io, s5_dcase, s5_mixing, s5_synthetic

SR = 32000


class ToyPools:
  """Two classes of fixed clips, one interferer, a white background (for exact checks)."""
  num_classes = 2

  def __init__(self, length=4000):
    r = np.random.default_rng(0)
    self.clips = [[r.standard_normal(length) for _ in range(3)] for _ in range(2)]
    self.noise = r.standard_normal((4, 20000))

  def num_clips(self, label):
    return 3

  def clip_length(self, label, clip):
    return len(self.clips[label][clip])

  def clip(self, label, clip):
    return self.clips[label][clip]

  def num_interferers(self):
    return 1

  def interferer_length(self, clip):
    return 3000

  def interferer(self, clip):
    return np.sin(np.arange(3000) * 0.3)

  def num_backgrounds(self, room):
    return 1

  def background_length(self, room, clip):
    return self.noise.shape[-1]

  def background(self, room, clip, start, num_samples, channels):
    return self.noise[:, start:start + num_samples]


class ToyRoom:
  """One room, 8 positions on the horizon; IR: direct tap at 10, a reflection at 100 (inside
  the 50 ms direct window) and a late tap at 3000 (outside)."""
  channels = 4

  def num_rooms(self):
    return 1

  def directions(self, room):
    return s5_mixing.unit_vectors(np.arange(8) * 45.0, np.zeros(8))

  def impulse_response(self, room, position):
    ir = np.zeros((4, 3200))
    gains = s5_mixing.foa_gains(self.directions(0)[position])
    ir[:, 10] = gains
    ir[:, 100] = 0.5 * gains
    ir[:, 3000] = 0.25
    return ir


def _settings(**kw):
  base = dict(duration_s=0.5, sample_rate=SR, event_range=(1, 3))
  base.update(kw)
  return s5_mixing.MixtureSettings(**base)


def test_levels_and_dry_target_follow_the_synthesiser():
  pools, room, settings = ToyPools(), ToyRoom(), _settings()
  event = s5_mixing.Event(label=1, clip=2, clip_start=500, onset=1000, length=2000, position=3,
                          snr_db=12.0)
  spec = s5_mixing.MixtureSpec(events=(event,), interferers=(), background=0, room=0,
                               background_start=100)
  out = s5_mixing.render(spec, pools, room, settings)
  total = settings.num_samples
  background = pools.noise[:, 100:100 + total]
  background = background * 10 ** ((-55 - 10 * np.log10(np.mean(background ** 2))) / 20)
  wet = out["waveform"] - background
  # The whole wet image (2000 + 3199 samples, it fits in the mixture) has mean power ref + snr.
  full = 2000 + 3200 - 1
  piece = pools.clip(1, 2)[500:2500]
  piece = piece / np.abs(piece).max()
  np.testing.assert_allclose(10 * np.log10(np.sum(wet.astype(np.float64) ** 2) / (4 * full)),
                             -55 + 12.0, atol=1e-3)
  # Dry target: channel 0's direct tap and the reflection at 100, not the late tap, same gain.
  expected = np.zeros(total)
  expected[1010:3010] += piece
  expected[1100:3100] += 0.5 * piece
  scale = np.dot(out["sources"][0], expected) / np.dot(expected, expected)
  np.testing.assert_allclose(out["sources"][0], scale * expected, atol=1e-6 * np.abs(scale))
  np.testing.assert_allclose(out["sources"][1:], 0.0)
  np.testing.assert_array_equal(out["labels"], [1, 2, 2])   # silence = num_classes
  # ...and that gain is the wet image's: channel 0 of the wet image holds scale · piece at 1010.
  np.testing.assert_allclose(wet[0, 1010:1100], scale * piece[:90], rtol=1e-4, atol=1e-7)


def test_draw_is_deterministic_and_keeps_the_task_rules():
  pools, room = ToyPools(), ToyRoom()
  settings = _settings(duplicate_rate=1.0)
  specs = s5_mixing.draw_many(7, "train", 60, pools, room, settings)
  again = s5_mixing.draw_many(7, "train", 10, pools, room, settings, offset=50)
  assert [s.to_json() for s in specs[50:]] == [s.to_json() for s in again]
  assert s5_mixing.MixtureSpec.from_json(specs[3].to_json()) == specs[3]
  directions = room.directions(0)
  saw_duplicate = False
  for spec in specs:
    assert 1 <= len(spec.events) <= 3 and len(spec.interferers) <= 2
    for e in spec.events + spec.interferers:
      assert 0 <= e.onset and e.onset + e.length <= settings.num_samples
      assert 5.0 <= e.snr_db <= 20.0 if e.label >= 0 else 0.0 <= e.snr_db <= 15.0
    labels = [e.label for e in spec.events]
    for label in set(labels):
      same = [e for e in spec.events if e.label == label]
      if len(same) > 1:
        saw_duplicate = True
        assert len({e.clip for e in same}) == len(same)
        for a in same:
          for b in same:
            if a is not b:
              cos = directions[a.position] @ directions[b.position]
              assert np.degrees(np.arccos(np.clip(cos, -1, 1))) > 60
  assert saw_duplicate


def _s5_cfg(**kw):
  base = dict(seed=0, num_train=24, num_validation=8, num_test=8, duration_s=1.0,
              clips_per_class=6, rooms=2, on_the_fly_train=False)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def test_synthetic_set_is_deterministic_and_consistent(tmp_path):
  splits = s5_synthetic.load(_s5_cfg(), str(tmp_path / "a"))
  train = splits["train"]
  assert train["waveform"].shape == (24, 4, SR) and train["sources"].shape == (24, 3, SR)
  labels = np.asarray(train["labels"])
  sources = train.audio("sources")
  silent = labels == s5_synthetic.SILENCE
  assert np.all(sources[silent] == 0) and np.all(np.abs(sources[~silent]).max(-1) > 0)
  assert 0 < silent.mean() < 1
  # Rebuilt elsewhere: the same bytes; rendered on the fly: the same mixtures (float16 storage).
  other = s5_synthetic.load(_s5_cfg(), str(tmp_path / "b"))["train"]
  np.testing.assert_array_equal(np.asarray(other["waveform"]), np.asarray(train["waveform"]))
  fly = s5_synthetic.load(_s5_cfg(on_the_fly_train=True), str(tmp_path / "a"))["train"]
  rows = np.array([5, 1, 7])
  np.testing.assert_allclose(fly.audio("waveform", rows), train.audio("waveform", rows),
                             rtol=2e-3, atol=1e-6)
  np.testing.assert_array_equal(fly["labels"], labels)
  assert json.loads(train["metadata"][0])["events"] is not None
  # Train and evaluation clips come from different pools and rooms.
  for label in range(len(s5_synthetic.CLASSES)):
    a = s5_synthetic.SyntheticPools(0, "train", 6, 4).clip(label, 0)
    b = s5_synthetic.SyntheticPools(0, "eval", 2, 4).clip(label, 0)
    assert len(a) != len(b) or not np.array_equal(a, b)
  room = lambda group: s5_synthetic.SyntheticRooms(0, group, 2).impulse_response(0, 0)
  assert not np.array_equal(room("train"), room("eval"))


def test_synthetic_classes_differ_and_clips_are_deterministic():
  pools = s5_synthetic.SyntheticPools(0, "train", 4, 4)
  for label in range(len(s5_synthetic.CLASSES)):
    clip = pools.clip(label, 1)
    assert clip.dtype == np.float32 and np.isfinite(clip).all() and np.abs(clip).max() > 0.9
    np.testing.assert_array_equal(clip, s5_synthetic.SyntheticPools(0, "train", 4, 4).clip(label, 1))
  # Mean log spectra of different classes differ more than two clips of one class (on average).
  def logspec(label, clip):
    x = pools.clip(label, clip)[:16000]
    x = np.pad(x, (0, 16000 - len(x)))
    return np.log(np.abs(np.fft.rfft(x.reshape(-1, 1000), axis=1)).mean(0) + 1e-6)
  within = np.mean([np.abs(logspec(k, 0) - logspec(k, 1)).mean() for k in range(18)])
  between = np.mean([np.abs(logspec(k, 0) - logspec((k + 5) % 18, 0)).mean() for k in range(18)])
  assert between > 1.5 * within


def test_load_splits_names_the_s5_settings(tmp_path):
  cfg = ml_collections.ConfigDict(dict(
      name="s5_synthetic", root="", split_dir="", sample_rate=32000, cache_dir=str(tmp_path),
      resampler="sinc_hann", cache_dtype="float32", skip_bad_files=False))
  with pytest.raises(ValueError, match="data.s5"):
    data_lib.load_splits(cfg, ["validation"])
  cfg.s5 = _s5_cfg()
  split = data_lib.load_splits(cfg, ["validation"])["validation"]
  assert len(split) == 8 and split.num_channels == 4


# ---------------------------------------------------------------- the DCASE 2026 Task 4 layout

def _write(path, data, sr=SR):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  soundfile.write(path, np.asarray(data, np.float32).T if np.ndim(data) == 2 else data, sr)


def _write_sofa(path, positions_deg, channels=4, taps=800):
  import h5py
  os.makedirs(os.path.dirname(path), exist_ok=True)
  r = np.random.default_rng(1)
  irs = r.standard_normal((len(positions_deg), channels, taps)) * np.exp(-np.arange(taps) / 100)
  irs[:, :, 5] += 20.0
  with h5py.File(path, "w") as f:
    f["Data.IR"] = irs
    f["SourcePosition"] = np.asarray(positions_deg, np.float64)
    f["SourcePosition"].attrs["Type"] = "spherical"
    f["Data.SamplingRate"] = np.array([SR], np.float64)


@pytest.fixture(scope="module")
def t4_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("t4") / "data")
  dev = os.path.join(root, "dev_set")
  r = np.random.default_rng(0)
  positions = [[az, 0.0, 1.5] for az in range(0, 360, 30)]
  for part in ("train", "valid"):
    for label in s5_dcase.CLASSES:   # Speech in per-speaker subfolders, as the task's
      for k in range(2):
        sub = (f"p00{k}",) if label == "Speech" else ()
        _write(os.path.join(dev, "sound_event", part, label, *sub, f"{label}{k}.wav"),
               0.5 * r.standard_normal(int(0.4 * SR)))
    _write(os.path.join(dev, "interference", part, "Zipper (clothing)", "z.wav"),
           0.3 * r.standard_normal(int(0.3 * SR)))
    _write(os.path.join(dev, "noise", part, "bg.wav"), 0.1 * r.standard_normal((4, 2 * SR)))
    _write_sofa(os.path.join(dev, "room_ir", part, "place1.sofa"), positions)
  xyz = s5_mixing.unit_vectors(60.0, 0.0) * 1.5
  meta = {"config": {"duration": 1, "sr": SR, "ref_db": -55, "max_event_overlap": 3},
          "fg_events": [{"label": "Speech", "source_file": "Speech/p001/Speech1.wav",
                         "source_time": 0.1, "event_time": 0.25, "event_duration": 0.3,
                         "event_position": [xyz.tolist()], "snr": 10.0, "role": "foreground"}],
          "int_events": [{"label": "Zipper (clothing)",
                          "source_file": "Zipper (clothing)/z.wav", "source_time": 0,
                          "event_time": 0.0, "event_duration": 0.3,
                          "event_position": [(s5_mixing.unit_vectors(0.0, 0.0) * 1.5).tolist()],
                          "snr": 3.0, "role": "interference"}],
          "bg_events": [{"label": None, "source_file": "bg.wav", "source_time": 1,
                         "event_time": 0, "event_duration": 1, "event_position": None,
                         "snr": 0, "role": "background"}],
          "room": {"module": "src.room", "main": "SofaRoom.from_metadata", "args": {"metadata": {
              "sofa_path": "data/dev_set/room_ir/valid/place1.sofa", "sr": SR, "nchan": 4}}}}
  os.makedirs(os.path.join(dev, "metadata", "valid"))
  with open(os.path.join(dev, "metadata", "valid", "mix0001.json"), "w") as f:
    json.dump(meta, f)
  with open(os.path.join(dev, "metadata", "valid.json"), "w") as f:
    json.dump([{"metadata_path": "valid/mix0001.json"}], f)
  test = os.path.join(dev, "synthesized", "test")
  for name, targets in (("soundscape_0", ["Speech", "Dishes"]), ("soundscape_1", [])):
    _write(os.path.join(test, "soundscape", f"{name}.wav"), 0.01 * r.standard_normal((4, SR)))
    for k, label in enumerate(targets):
      _write(os.path.join(test, "oracle_target", f"{name}_{k}_{label}.wav"),
             0.01 * r.standard_normal(SR))
  _write(os.path.join(root, "eval_set", "synthesized", "eval", "soundscape", "eval_0000.wav"),
         0.01 * r.standard_normal((4, SR)))
  return root


def _t4_cfg(root):
  return ml_collections.ConfigDict(dict(
      name="dcase26t4", root=root, split_dir="", sample_rate=32000, cache_dir="",
      resampler="sinc_hann", cache_dtype="float32", skip_bad_files=False,
      s5=dict(seed=0, num_train=6, duration_s=1.0)))


def test_t4_reader_splits(t4_root):
  splits = data_lib.load_splits(_t4_cfg(t4_root), ["train", "valid", "test", "eval"])
  train = splits["train"]
  assert train["waveform"].shape == (6, 4, SR)
  mixture = train.audio("waveform", np.array([2, 0]))
  assert mixture.shape == (2, 4, SR) and np.isfinite(mixture).all()
  valid = splits["valid"]
  np.testing.assert_array_equal(valid["labels"], [[s5_dcase.CLASSES.index("Speech"), 18, 18]])
  assert valid.filename.tolist() == ["mix0001"]
  source = valid.audio("sources")[0, 0]
  onset = int(0.25 * SR)
  assert np.all(source[:onset] == 0) and np.abs(source[onset:onset + 200]).max() > 0
  clip, _ = audio_io.read_audio(os.path.join(t4_root, "dev_set", "sound_event", "valid",
                                             "Speech", "p001", "Speech1.wav"))
  # The dry target starts with the clip from 0.1 s through the IR's direct window.
  assert np.corrcoef(source[onset + 5:onset + 400], clip[3200:3595])[0, 1] > 0.5
  test = splits["test"]
  np.testing.assert_array_equal(test["labels"], [[s5_dcase.CLASSES.index("Speech"),
                                                  s5_dcase.CLASSES.index("Dishes"), 18],
                                                 [18, 18, 18]])
  assert test.audio("sources").shape == (2, 3, SR)
  assert "labels" not in splits["eval"] and len(splits["eval"]) == 1


def test_t4_metadata_names_the_files_behind_the_indices(t4_root, tmp_path):
  """A mixture's metadata carries the digest of the files its indices point at: a clip added
  to a folder (which shifts the indices after it) changes every mixture's metadata, and so the
  fingerprints a semantic teacher's cache keys them by."""
  import shutil
  root = str(tmp_path / "data")
  shutil.copytree(t4_root, root)
  before = s5_dcase.load(root, "train", _t4_cfg(root).s5)
  digest = json.loads(before["metadata"][0])["sources"]
  assert all(json.loads(m)["sources"] == digest for m in before["metadata"])
  assert s5_mixing.MixtureSpec.from_json(before["metadata"][0]).room == json.loads(
      before["metadata"][0])["room"]
  _write(os.path.join(root, "dev_set", "sound_event", "train", "Dishes", "Dishes0a.wav"),
         0.1 * np.ones(SR // 4))
  after = s5_dcase.load(root, "train", _t4_cfg(root).s5)
  assert json.loads(after["metadata"][0])["sources"] != digest


def test_t4_reader_names_bad_input(t4_root, tmp_path):
  import shutil
  root = str(tmp_path / "data")
  shutil.copytree(t4_root, root)
  soundscapes = os.path.join(root, "dev_set", "synthesized", "test", "soundscape")
  _write(os.path.join(soundscapes, "soundscape_2.wav"), np.zeros((2, SR)))
  with pytest.raises(audio_io.BadAudioError, match=r"soundscape_2.wav: 2 channel\(s\), expected 4"):
    s5_dcase.load(root, "test", _t4_cfg(root).s5)
  os.remove(os.path.join(soundscapes, "soundscape_2.wav"))
  _write(os.path.join(soundscapes, "soundscape_3.wav"), np.zeros((4, 16000)), sr=16000)
  with pytest.raises(audio_io.BadAudioError, match="soundscape_3.wav: sample rate 16000 Hz, "
                                                   "expected 32000 Hz"):
    s5_dcase.load(root, "test", _t4_cfg(root).s5)
  os.remove(os.path.join(soundscapes, "soundscape_3.wav"))
  oracle = os.path.join(root, "dev_set", "synthesized", "test", "oracle_target")
  _write(os.path.join(oracle, "soundscape_1_0_Trumpet.wav"), np.zeros(SR))
  with pytest.raises(ValueError, match="soundscape_1_0_Trumpet.wav: unknown class 'Trumpet'"):
    s5_dcase.load(root, "test", _t4_cfg(root).s5)
  os.remove(os.path.join(oracle, "soundscape_1_0_Trumpet.wav"))
  os.remove(os.path.join(root, "dev_set", "sound_event", "valid", "Speech", "p001",
                         "Speech1.wav"))
  with pytest.raises(audio_io.BadAudioError, match="Speech1.wav: listed by .*valid.json"):
    s5_dcase.load(root, "valid", _t4_cfg(root).s5)
  os.makedirs(os.path.join(root, "dev_set", "sound_event", "train", "Trumpet"))
  with pytest.raises(ValueError, match=r"unknown class folder\(s\) \['Trumpet'\]"):
    s5_dcase.load(root, "train", _t4_cfg(root).s5)
  os.rmdir(os.path.join(root, "dev_set", "sound_event", "train", "Trumpet"))
  import shutil as sh
  sh.rmtree(os.path.join(root, "dev_set", "sound_event", "train", "Pour"))
  os.makedirs(os.path.join(root, "dev_set", "sound_event", "train", "Pour"))
  with pytest.raises(FileNotFoundError, match=r"no audio for class\(es\) \['Pour'\]"):
    s5_dcase.load(root, "train", _t4_cfg(root).s5)


def test_t4_duplicates_come_from_another_source_folder(t4_root):
  pools = s5_dcase.FolderPools(os.path.join(t4_root, "dev_set"), "train")
  speech = s5_dcase.CLASSES.index("Speech")
  assert [pools.clip_group(speech, c) for c in range(2)] == ["p000", "p001"]
  assert pools.clip_group(0, 1) == "AlarmClock1.wav"
  rooms = s5_dcase.SofaRooms(os.path.join(t4_root, "dev_set", "room_ir", "train"))
  settings = s5_mixing.MixtureSettings(duration_s=1.0, event_range=(2, 3), duplicate_rate=1.0)
  for spec in s5_mixing.draw_many(0, "train", 40, pools, rooms, settings):
    for label in {e.label for e in spec.events}:
      groups = [pools.clip_group(label, e.clip) for e in spec.events if e.label == label]
      assert len(groups) == len(set(groups)), spec


def _same_splits(cfg, names):
  """The splits from files and from the TFDS records built from them: equal column by column."""
  from jax_asc import build_tfds
  build_tfds.build(cfg, cfg.tfds_dir)
  files = data_lib.load_splits(cfg, names)
  cfg.source = "tfds"
  records = data_lib.load_splits(cfg, names)
  cfg.source = "files"
  for name in names:
    a, b = files[name], records[name]
    assert sorted(a.columns) == sorted(b.columns) and a.classes == b.classes, name
    for column in ("labels", "metadata", "filename", "index"):
      np.testing.assert_array_equal(np.asarray(a[column]), np.asarray(b[column]), err_msg=column)
    rows = np.array([len(a) - 1, 0])
    for column in ("waveform", "sources"):
      np.testing.assert_array_equal(a.audio(column, rows), b.audio(column, rows), err_msg=column)


def test_s5_tfds_records_hold_what_the_files_source_reads(tmp_path, t4_root):
  synthetic = ml_collections.ConfigDict(dict(
      name="s5_synthetic", root="", split_dir="", sample_rate=32000,
      cache_dir=str(tmp_path / "cache"), resampler="sinc_hann", cache_dtype="float32",
      skip_bad_files=False, source="files", tfds_dir=str(tmp_path / "tfds"),
      s5=_s5_cfg(num_train=6, num_validation=2, num_test=3)))
  _same_splits(synthetic, ["train", "test"])
  t4 = _t4_cfg(t4_root)
  t4.update(source="files", tfds_dir=str(tmp_path / "tfds"))
  t4.s5.on_the_fly_train = False      # the records hold one epoch's training mixtures
  _same_splits(t4, ["train", "valid", "test"])
  t4.update(source="tfds")
  t4.s5.on_the_fly_train = True
  with pytest.raises(ValueError, match="holds one epoch's: set data.s5.on_the_fly_train=False"):
    data_lib.load_splits(t4, ["train"])


def test_mixtures_drawn_on_the_fly_are_new_every_epoch_and_resume(tmp_path):
  from jax_asc.data import pipeline
  train = s5_synthetic.load(_s5_cfg(num_train=4, on_the_fly_train=True), str(tmp_path))["train"]
  assert train.per_epoch is not None and train.take([0, 1]).per_epoch is None
  with pytest.raises(ValueError, match="drawn anew every epoch"):
    train.with_columns({"extra": np.zeros(len(train))})

  def batches(start, count):
    iterator = pipeline.train_batches(train, global_batch=2, seed=3, start_step=start,
                                      columns=("waveform", "labels"))
    out = [next(iterator) for _ in range(count)]
    iterator.close()
    return out
  run = batches(0, 4)                       # two epochs of two steps
  resumed = batches(2, 2)                   # a run resumed at epoch 1
  for a, b in zip(run[2:], resumed):
    np.testing.assert_array_equal(a["waveform"], b["waveform"])
  epoch0 = np.concatenate([b["waveform"] for b in run[:2]])
  epoch1 = np.concatenate([b["waveform"] for b in run[2:]])
  assert not any(np.array_equal(x, y) for x in epoch0 for y in epoch1)
  # Epoch 1's split is mixtures 4-7 of the same draw: named by their draw index.
  assert train.per_epoch(1).filename.tolist() == [f"train_{i:09d}" for i in range(4, 8)]
