"""Waveform augmentations: JAX and tf.data versions agree, DIR matches scipy, and the real
MicIRP / FSDD sets of ../shared/data go through the same code (skipped when absent)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal
import tensorflow as tf

from jax_asc.audio import augment
from jax_asc.data import formats, impulse_responses, loading, pipeline, tf_augment

SHARED_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                           "shared", "data")
MICIRP = os.path.join(SHARED_DATA, "micirp")
FSDD = os.path.join(SHARED_DATA, "fsdd")


def _batch(b=4, n=1000, seed=0):
  return np.random.default_rng(seed).standard_normal((b, n)).astype(np.float32)


def test_roll_and_gain_agree_between_jax_tf_and_numpy():
  x = _batch()
  shifts = np.array([0, 3, -7, 999], np.int32)
  expected = np.stack([np.roll(row, s) for row, s in zip(x, shifts)])
  np.testing.assert_array_equal(augment.roll_by(jnp.asarray(x), jnp.asarray(shifts)), expected)
  np.testing.assert_array_equal(tf_augment.roll_by(tf.constant(x), tf.constant(shifts)), expected)
  gains = np.array([0.0, 6.0, -3.0, 20.0], np.float32)
  ref = x * (10 ** (gains / 20))[:, None]
  np.testing.assert_allclose(augment.gain_by(jnp.asarray(x), jnp.asarray(gains)), ref, rtol=1e-6)
  np.testing.assert_allclose(tf_augment.gain_by(tf.constant(x), tf.constant(gains)), ref,
                             rtol=1e-6)


def test_fft_convolution_matches_scipy_full_truncated():
  x = _batch(3, 800)
  irs = _batch(3, 150, seed=1) * np.exp(-np.arange(150) / 20)[None, :]
  expected = np.stack([scipy.signal.convolve(a, h, "full")[:800] for a, h in zip(x, irs)])
  np.testing.assert_allclose(augment.convolve_truncated(jnp.asarray(x), jnp.asarray(irs)),
                             expected, atol=1e-4)
  np.testing.assert_allclose(tf_augment.convolve_truncated(tf.constant(x), tf.constant(irs)),
                             expected, atol=1e-4)


def test_random_augmentations_ranges_probability_and_determinism():
  x = jnp.asarray(_batch(256, 64))
  key = jax.random.key(0)
  rolled = augment.time_roll(key, x, 5)
  shifts = [next(s for s in range(-5, 6) if np.array_equal(np.roll(np.asarray(a), s), b))
            for a, b in zip(x, np.asarray(rolled))]
  assert min(shifts) == -5 and max(shifts) == 5
  np.testing.assert_array_equal(rolled, augment.time_roll(key, x, 5))
  ratio = np.asarray(augment.random_gain(key, x, 6.0))[:, 0] / np.asarray(x)[:, 0]
  assert np.all(np.abs(20 * np.log10(np.abs(ratio))) <= 6.0 + 1e-4)
  irs = jnp.asarray(np.eye(3, 8, 1, dtype=np.float32))   # pure delays of 1, 2, 3 samples
  devices = jnp.asarray(np.arange(256) % 2)
  out = np.asarray(augment.device_impulse_response(key, x, irs, 0.5, eligible=devices == 0))
  changed = np.any(out != np.asarray(x), axis=1)
  assert not changed[1::2].any()                        # ineligible devices untouched
  assert 0.35 < changed[0::2].mean() < 0.65             # p = 0.5 on the eligible ones


def test_tf_pipeline_augmentation_is_deterministic_for_a_seed():
  batch = {"waveform": tf.constant(_batch(8, 500)),
           "recording_device": tf.constant(np.arange(8) % 3)}
  irs = tf.constant(np.eye(4, 32, 2, dtype=np.float32))
  kwargs = dict(max_shift=50, max_gain_db=3.0, irs=irs, dir_prob=0.7, dir_device_ids=(0,))
  a = tf_augment.augment_batch(batch, tf.constant([1, 2]), **kwargs)["waveform"].numpy()
  b = tf_augment.augment_batch(batch, tf.constant([1, 2]), **kwargs)["waveform"].numpy()
  c = tf_augment.augment_batch(batch, tf.constant([1, 3]), **kwargs)["waveform"].numpy()
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


@pytest.mark.skipif(not os.path.isdir(MICIRP), reason="../shared/data/micirp not present")
def test_micirp_folder_loads_resampled_and_applies():
  irs, names = impulse_responses.load_impulse_responses(MICIRP, 32000)
  assert len(names) == 66 and names == sorted(names)
  assert irs.shape[0] == 66 and 0.3 * 32000 < irs.shape[1] < 0.6 * 32000
  assert np.all(np.isfinite(irs)) and np.all(np.abs(irs).max(axis=1) > 0)
  x = jnp.asarray(_batch(4, 32000))
  out = augment.device_impulse_response(jax.random.key(0), x, jnp.asarray(irs), 1.0)
  first = int(np.flatnonzero(np.any(np.asarray(out) != np.asarray(x), axis=1))[0])
  assert out.shape == x.shape and np.all(np.isfinite(out)) and first == 0


@pytest.mark.skipif(not os.path.isdir(FSDD), reason="../shared/data/fsdd not present")
def test_free_spoken_digits_through_the_pipeline(tmp_path):
  manifest = formats.fsdd(FSDD, "test")
  assert len(manifest.examples) == 300
  split = loading.load(manifest, sample_rate=16000, cache_dir=str(tmp_path))
  assert split["waveform"].shape == (300, 1, 40000)    # 2.5 s at 16 kHz, zero-padded
  assert sorted(set(split["label"].tolist())) == list(range(10))
  assert {split.devices[d] for d in split["recording_device"]} == set(manifest.devices)
  rows = 0
  for batch in pipeline.eval_batches(split, global_batch=64):
    rows += int(batch["mask"].sum())
    assert np.all(np.isfinite(batch["waveform"]))
  assert rows == 300
  train = formats.fsdd(FSDD, "train")
  assert len(train.examples) == 2700


@pytest.mark.skipif(not os.path.isdir(MICIRP), reason="../shared/data/micirp not present")
def test_training_inputs_apply_dir_roll_and_gain_on_the_device(tiny_config):
  from jax_asc.stages import common
  config = tiny_config
  config.waveform_augment.update(roll_samples=400, gain_db=3.0, dir_folder=MICIRP, dir_prob=1.0,
                                 dir_devices=("a",))
  split, task = common.training_task(config, common.load_splits(config, "train")["train"])
  batch = next(pipeline.eval_batches(split, global_batch=16))
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  make = jax.jit(task.make_inputs)
  train_inputs = make(jax.random.key(0), batch).model_input   # a loop.Prepared in training
  assert np.all(np.isfinite(train_inputs))
  np.testing.assert_array_equal(train_inputs, make(jax.random.key(0), batch).model_input)
  assert not np.allclose(train_inputs, make(None, batch))
  config.waveform_augment.dir_devices = ("z9",)
  with pytest.raises(ValueError, match="z9"):
    common.training_task(config, split)
