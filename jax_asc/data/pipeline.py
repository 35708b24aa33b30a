"""tf.data input pipelines: deterministic training batches and masked evaluation batches.

Training: the order of an epoch is a permutation drawn from (seed, epoch) alone, so a resumed run
continues the same order from the batch it stopped at. Each host takes its own contiguous slice
of every global batch. An epoch has `len(split) // global_batch` steps; the few examples left
over differ from epoch to epoch (they are reshuffled), so none is excluded for good.

Evaluation: every example exactly once, in order, padded to whole global batches; padded rows
carry `mask = False` (big_vision's `_mask`), so metrics count each example once on any number of
devices and hosts.

Batches are dicts of NumPy arrays: `waveform` (b, samples) float32, `label`, `device`, `index`
(int32), `mask` (bool); `filename` stays on the host (`Split.filename[index]`).
"""
from __future__ import annotations

import math
from typing import Iterator, Optional

import numpy as np
import tensorflow as tf

from jax_asc.data.dataset import Split

# TF must never grab an accelerator that JAX uses (google/flax#4942).
tf.config.set_visible_devices([], "GPU")

_FIELDS = ("label", "device", "index")


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The example order of one training epoch, from (seed, epoch) only."""
  return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_examples)


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
  steps = num_examples // global_batch
  if steps == 0:
    raise ValueError(f"the training split has {num_examples} examples, fewer than one global "
                     f"batch of {global_batch}")
  return steps


def _gather_dataset(split: Split, rows: np.ndarray, per_host_batch: int, mask: np.ndarray):
  """tf.data over row indices (already in order), batched, gathering examples per batch.

  Waveforms are gathered with NumPy (the split's array may be a memory-mapped cache larger than
  memory); the order, and so the batches, are fixed by `rows`.
  """
  columns = {name: getattr(split, name) for name in _FIELDS}

  def gather_numpy(batch_rows):
    order = np.argsort(batch_rows)          # sorted reads are faster on a memory map
    waves = np.empty((len(batch_rows), split.num_samples), np.float32)
    waves[order] = split.float_waveforms(batch_rows[order])
    return (waves,) + tuple(columns[name][batch_rows] for name in _FIELDS)

  def gather(batch_rows, batch_mask):
    outputs = tf.numpy_function(gather_numpy, [batch_rows],
                                [tf.float32] + [tf.as_dtype(columns[n].dtype) for n in _FIELDS])
    out = {"waveform": tf.ensure_shape(outputs[0], [per_host_batch, split.num_samples])}
    for name, value in zip(_FIELDS, outputs[1:]):
      out[name] = tf.ensure_shape(value, [per_host_batch])
    out["mask"] = batch_mask
    return out

  ds = tf.data.Dataset.from_tensor_slices((rows.astype(np.int64), mask))
  ds = ds.batch(per_host_batch, drop_remainder=True)
  ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(2)


def train_batches(split: Split, *, global_batch: int, seed: int, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1,
                  num_epochs: Optional[int] = None) -> Iterator[dict]:
  """Endless (or `num_epochs`) training batches of this host, from global step `start_step`."""
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by {process_count} hosts")
  per_host = global_batch // process_count
  steps = steps_per_epoch(len(split), global_batch)
  epoch, skip = divmod(start_step, steps)
  while num_epochs is None or epoch < num_epochs:
    order = epoch_permutation(len(split), seed, epoch)[: steps * global_batch]
    order = order.reshape(steps, process_count, per_host)[skip:, process_index].reshape(-1)
    ds = _gather_dataset(split, order, per_host, np.ones(len(order), bool))
    yield from ds.as_numpy_iterator()
    epoch, skip = epoch + 1, 0


def eval_batches(split: Split, *, global_batch: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict]:
  """Every example once, padded with masked rows to whole global batches; this host's part."""
  per_host = global_batch // process_count
  num_batches = max(1, math.ceil(len(split) / global_batch))
  rows = np.arange(num_batches * global_batch)
  mask = rows < len(split)
  rows = np.where(mask, rows, 0)
  rows = rows.reshape(num_batches, process_count, per_host)[:, process_index].reshape(-1)
  mask = mask.reshape(num_batches, process_count, per_host)[:, process_index].reshape(-1)
  return _gather_dataset(split, rows, per_host, mask).as_numpy_iterator()
