"""Synthetic dataset and tf.data pipelines: determinism, splits, order, padding, sharding."""
import numpy as np
import pytest

from jax_asc.data import pipeline, synthetic
from jax_asc.data.dataset import Split


def _split(n=23):
  return Split(name="toy", waveform=np.arange(n * 4, dtype=np.float32).reshape(n, 4),
               label=np.arange(n, dtype=np.int32) % 3, device=np.zeros(n, np.int32),
               filename=np.array([f"f{i}.wav" for i in range(n)]),
               index=np.arange(n, dtype=np.int32), classes=("x", "y", "z"), devices=("a",),
               sample_rate=4)


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
  names = lambda s: {s.devices[d] for d in s.device}
  assert names(train) <= set(synthetic.TRAIN_DEVICES)
  assert names(test) == set(synthetic.DEVICES)          # S4–S6 only here
  assert np.bincount(test.device).tolist() == [10] * 9  # balanced per device
  location = lambda s: {int(i.rsplit("-", 1)[1]) for i in s.identifier}
  assert location(train) <= set(synthetic.TRAIN_LOCATIONS)
  assert location(test) <= set(synthetic.TEST_LOCATIONS)
  assert train.waveform.shape == (60, 8000) and train.waveform.dtype == np.int16
  assert len(set(train.filename)) == 60 and all(f.endswith(f"-{train.devices[d]}.wav")
                                                for f, d in zip(train.filename, train.device))
  again = synthetic.load(cfg, data_dir)["train"]                  # read back from the cache
  assert np.array_equal(again.waveform, train.waveform)


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
  np.testing.assert_array_equal(full[0]["waveform"], split.waveform[full[0]["index"]])


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


def test_split_rejects_duplicate_filenames():
  s = _split(3)
  with pytest.raises(ValueError, match="duplicate"):
    Split(name="dup", waveform=s.waveform, label=s.label, device=s.device,
          filename=np.array(["a.wav", "a.wav", "b.wav"]), index=s.index, classes=s.classes,
          devices=s.devices, sample_rate=4)
