"""Synthetic dataset and tf.data pipelines: determinism, splits, order, padding, sharding."""
import numpy as np
import pytest

from jax_asc.data import pipeline, synthetic
from jax_asc.data.dataset import Split
from toy_splits import make_split as _split


def test_synthetic_clips_are_deterministic_and_device_dependent():
  a = synthetic.render_clip(0, 3, 2, "a", ("train", 5), n=8000)
  assert np.array_equal(a, synthetic.render_clip(0, 3, 2, "a", ("train", 5), n=8000))
  b = synthetic.render_clip(0, 3, 2, "s4", ("train", 5), n=8000)
  assert not np.allclose(a, b)
  other_seed = synthetic.render_clip(1, 3, 2, "a", ("train", 5), n=8000)
  assert not np.allclose(a, other_seed)
  assert np.all(np.abs(a) <= 1.0) and np.isfinite(a).all() and a.std() > 1e-3


def test_synthetic_splits_devices_locations_and_metadata(data_dir):
  cfg = type("C", (), dict(seed=0, num_train=60, num_validation=20, num_test=90,
                           clip_seconds=0.25))
  splits = synthetic.load(cfg, data_dir)
  train, test = splits["train"], splits["test"]
  names = lambda s: {s.devices[d] for d in s["recording_device"]}
  assert names(train) <= set(synthetic.TRAIN_DEVICES)
  assert names(test) == set(synthetic.DEVICES)          # S4–S6 only here
  assert np.bincount(test["recording_device"]).tolist() == [10] * 9  # balanced per device
  location = lambda s: {int(i.rsplit("-", 1)[1]) for i in s["identifier"]}
  assert location(train) <= set(synthetic.TRAIN_LOCATIONS)
  assert location(test) <= set(synthetic.TEST_LOCATIONS)
  assert train["waveform"].shape == (60, 1, 8000) and train["waveform"].dtype == np.int16
  assert len(set(train.filename)) == 60 and all(
      f.endswith(f"-{train.devices[d]}.wav")
      for f, d in zip(train.filename, train["recording_device"]))
  again = synthetic.load(cfg, data_dir)["train"]                  # read back from the cache
  assert np.array_equal(again["waveform"], train["waveform"])


def test_training_order_depends_on_seed_and_epoch_and_resumes_mid_epoch():
  split = _split()
  full = list(pipeline.train_batches(split, global_batch=4, seed=1, num_epochs=3))
  assert len(full) == 3 * 5                             # 23 // 4 steps per epoch
  resumed = list(pipeline.train_batches(split, global_batch=4, seed=1, start_step=7,
                                        num_epochs=3))
  for a, b in zip(full[7:], resumed):
    assert np.array_equal(a["index"], b["index"])
    assert np.array_equal(a["waveform"], b["waveform"])
  epoch0 = np.concatenate([b["index"] for b in full[:5]])
  epoch1 = np.concatenate([b["index"] for b in full[5:10]])
  assert len(set(epoch0)) == 20 and not np.array_equal(epoch0, epoch1)
  other_seed = list(pipeline.train_batches(split, global_batch=4, seed=2, num_epochs=1))
  assert not np.array_equal(epoch0, np.concatenate([b["index"] for b in other_seed]))
  np.testing.assert_array_equal(full[0]["waveform"], split["waveform"][full[0]["index"]])


def test_hosts_read_disjoint_slices_of_each_global_batch():
  split = _split()
  whole = list(pipeline.train_batches(split, global_batch=4, seed=0, num_epochs=1))
  parts = [list(pipeline.train_batches(split, global_batch=4, seed=0, num_epochs=1,
                                       process_index=p, process_count=2)) for p in range(2)]
  for step, batch in enumerate(whole):
    joined = np.concatenate([parts[0][step]["index"], parts[1][step]["index"]])
    assert np.array_equal(joined, batch["index"])


@pytest.mark.parametrize("hosts", [1, 2])
def test_eval_batches_cover_every_example_once(hosts):
  split = _split(23)
  seen = []
  for p in range(hosts):
    for batch in pipeline.eval_batches(split, global_batch=8, process_index=p,
                                       process_count=hosts):
      assert len(batch["index"]) == 8 // hosts
      seen.extend(batch["index"][batch["mask"]].tolist())
  assert sorted(seen) == list(range(23))


def test_too_small_training_split_is_an_error():
  with pytest.raises(ValueError, match="fewer than one global batch"):
    next(pipeline.train_batches(_split(3), global_batch=4, seed=0))


def test_split_rejects_duplicate_filenames_and_bad_columns():
  s = _split(3)
  with pytest.raises(ValueError, match="duplicate"):
    Split(name="dup", columns=dict(s.columns, filename=np.array(["a.wav", "a.wav", "b.wav"])),
          classes=s.classes, devices=s.devices, sample_rate=4)
  with pytest.raises(ValueError, match="column 'label' has 2 rows, filename has 3"):
    Split(name="short", columns=dict(s.columns, label=np.zeros(2, np.int32)),
          classes=s.classes, devices=s.devices, sample_rate=4)
  with pytest.raises(ValueError, match=r"required column\(s\) \['index'\]"):
    Split(name="no_index", columns={k: v for k, v in s.columns.items() if k != "index"},
          classes=s.classes, devices=s.devices, sample_rate=4)
  with pytest.raises(ValueError, match=r"waveform must be \(N, channels, samples\)"):
    Split(name="flat", columns=dict(s.columns, waveform=np.zeros((3, 4), np.float32)),
          classes=s.classes, devices=s.devices, sample_rate=4)
  with pytest.raises(KeyError, match="has no column 'labels'; columns: "):
    s["labels"]


def _multi_label_split(n=12, channels=4, tracks=3, samples=6):
  """A split with every kind of column: 4-channel mixtures, K event tracks, dry sources."""
  rng = np.random.default_rng(0)
  return _split(n, samples=samples, channels=channels,
                labels=rng.integers(0, 5, (n, tracks)).astype(np.int32),
                sources=rng.standard_normal((n, tracks, samples)).astype(np.float32),
                query=rng.standard_normal((n, 7)).astype(np.float32),
                identifier=np.array([f"room-{i % 4}" for i in range(n)]))


def test_batches_carry_every_numeric_column_and_keep_strings_on_the_host():
  split = _multi_label_split()
  assert set(split.batch_columns) == {"waveform", "label", "recording_device", "index",
                                      "labels", "sources", "query"}
  for batch in pipeline.train_batches(split, global_batch=4, seed=3, num_epochs=1):
    rows = batch["index"]
    assert batch["waveform"].shape == (4, 4, 6) and batch["sources"].shape == (4, 3, 6)
    for name in split.batch_columns:
      np.testing.assert_array_equal(batch[name], np.asarray(split[name])[rows])
    assert "filename" not in batch and "identifier" not in batch
  only = next(pipeline.eval_batches(split, global_batch=8, columns=("labels",)))
  assert set(only) == {"labels", "mask"}
  with pytest.raises(ValueError, match="holds strings"):
    pipeline.host_batch(split, [0], ("identifier",))


def test_the_accelerator_gather_gives_the_host_batch():
  import jax
  import jax.numpy as jnp
  from jax_asc.data import on_accelerator
  split = _multi_label_split()
  split = split.with_columns({"sources": split["sources"].astype(np.float16)})
  data = on_accelerator.from_split(split, global_batch=4, seed=3, accelerator_dtype="float32")
  rows = data.rows(2)
  gathered = jax.jit(data.gather)(jax.tree.map(jnp.asarray, data.arrays), jnp.asarray(rows))
  host = pipeline.host_batch(split, rows)
  assert set(gathered) == set(host) | {"mask"}
  for name, value in host.items():
    assert gathered[name].dtype == value.dtype, name
    np.testing.assert_array_equal(np.asarray(gathered[name]), value)


def test_take_and_segments_of_multichannel_memory_mapped_columns(tmp_path):
  from jax_asc.data import derived
  from jax_asc.data.dataset import RowView
  split = _multi_label_split(n=6, channels=2, tracks=2, samples=8)
  path = str(tmp_path / "waveform.npy")
  np.save(path, np.asarray(split["waveform"]))
  split = split.with_columns({"waveform": np.load(path, mmap_mode="r")})
  part = split.take([4, 1, 3])
  assert isinstance(part["waveform"], RowView)                  # nothing read yet
  np.testing.assert_array_equal(np.asarray(part["waveform"]),
                                np.asarray(split["waveform"])[[4, 1, 3]])
  segments = derived.segment(part, 2 / split.sample_rate)       # 8 samples → 4 segments of 2
  assert segments["waveform"].shape == (12, 2, 2) and segments["sources"].shape == (12, 2, 2)
  assert segments.filename[:5].tolist() == ["f4.wav@0", "f4.wav@1", "f4.wav@2", "f4.wav@3",
                                            "f1.wav@0"]
  assert segments.index[:5].tolist() == [16, 17, 18, 19, 4]
  whole = np.asarray(split["waveform"])
  np.testing.assert_array_equal(segments["waveform"][5], whole[1, :, 2:4])
  sources = np.asarray(split["sources"])
  np.testing.assert_array_equal(segments["sources"][[7, 0]],
                                np.stack([sources[1, :, 6:8], sources[4, :, 0:2]]))
  np.testing.assert_array_equal(segments["labels"][:4], np.repeat(
      np.asarray(split["labels"])[[4]], 4, axis=0))
  batch = pipeline.host_batch(segments, [11, 0, 6])
  np.testing.assert_array_equal(batch["waveform"][0], whole[3, :, 6:8])
  np.testing.assert_array_equal(batch["waveform"][2], whole[1, :, 4:6])
