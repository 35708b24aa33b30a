"""tf.data input pipelines: deterministic training batches and masked evaluation batches.

Training: the order of an epoch is a permutation drawn from (seed, epoch) alone, so a resumed run
continues the same order from the batch it stopped at. Each host takes its own contiguous slice
of every global batch. An epoch has `len(split) // global_batch` steps; the few examples left
over differ from epoch to epoch (they are reshuffled), so none is excluded for good. A split
drawn anew every epoch (`Split.per_epoch`: report 004's mixtures rendered on the fly) gives
epoch e's batches from its epoch-e split, so a resumed run reads the same mixtures too.

Evaluation: every example exactly once, in order, padded to whole global batches; padded rows
carry `mask = False` (big_vision's `_mask`), so metrics count each example once on any number of
devices and hosts.

Batches are dicts of NumPy arrays, one entry per numeric column of the split (or the columns
asked for), gathered generically: audio columns (`waveform` (b, C, samples), `sources`) as
float32, every other column in its own dtype and shape (`label`, `labels`, `recording_device`,
`index`, teacher-cache columns, …), plus `mask` (bool). String columns (`filename`,
`identifier`) stay on the host (`Split.filename[index]`).
"""
from __future__ import annotations

import atexit
import math
import threading
import weakref
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from jax_asc.data.dataset import AUDIO_COLUMNS, Split

# TF must never grab an accelerator that JAX uses (google/flax#4942).
tf.config.set_visible_devices([], "GPU")

def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The example order of one training epoch, from (seed, epoch) only."""
  return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_examples)


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
  steps = num_examples // global_batch
  if steps == 0:
    raise ValueError(f"the training split has {num_examples} examples, fewer than one global "
                     f"batch of {global_batch}")
  return steps


def batch_columns(split: Split, columns: Optional[Sequence[str]] = None) -> Tuple[str, ...]:
  """The columns a batch of `split` carries: `columns` (checked) or every numeric one."""
  if columns is None:
    return split.batch_columns
  for name in columns:
    split[name]   # KeyError naming the split's columns
    if name not in split.batch_columns:
      raise ValueError(f"column {name!r} of split {split.name!r} holds strings: it stays on the "
                       "host and cannot be batched")
  return tuple(columns)


def column_spec(split: Split, name: str) -> Tuple[np.dtype, tuple]:
  """(dtype, per-example shape) of column `name` in a batch (audio columns as float32)."""
  column = split[name]
  dtype = np.dtype(np.float32) if name in AUDIO_COLUMNS else np.dtype(column.dtype)
  return dtype, tuple(column.shape[1:])


def host_batch(split: Split, rows: np.ndarray,
               columns: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
  """The examples at `rows` as a batch of NumPy arrays, in that order: every column of
  `batch_columns(split, columns)`, audio columns as float32.

  Columns are gathered with NumPy (a column may be a memory-mapped cache larger than memory),
  reading the rows in sorted order, which is faster on a memory map.
  """
  names = batch_columns(split, columns)
  return _gather_rows(split, rows, names, [column_spec(split, n) for n in names])


def _gather_rows(split: Split, rows, names, specs) -> Dict[str, np.ndarray]:
  rows = np.asarray(rows)
  order = np.argsort(rows, kind="stable")
  batch = {}
  for name, (dtype, shape) in zip(names, specs):
    out = np.empty((len(rows),) + shape, dtype)
    out[order] = split.column_rows(name, rows[order])
    batch[name] = out
  return batch


def _gather_dataset(split: Split, rows: tf.data.Dataset, per_host_batch: int,
                    columns: Optional[Sequence[str]] = None):
  """tf.data over (row index, mask) pairs already in order: batched, gathering each batch.

  For a split drawn anew every epoch (`Split.per_epoch`) a row index is epoch · N + row (a
  batch never spans two epochs) and the batch is gathered from that epoch's split."""
  names = batch_columns(split, columns)
  specs = [column_spec(split, n) for n in names]
  epochs = _EpochSplits(split)

  def gather_numpy(batch_rows):
    source, batch_rows = epochs.of(batch_rows)
    batch = _gather_rows(source, batch_rows, names, specs)
    return tuple(batch[name] for name in names)

  def gather(batch_rows, batch_mask):
    outputs = tf.numpy_function(gather_numpy, [batch_rows], [tf.as_dtype(d) for d, _ in specs])
    out = {name: tf.ensure_shape(value, [per_host_batch, *shape])
           for name, value, (_, shape) in zip(names, outputs, specs)}
    out["mask"] = batch_mask
    return out

  ds = rows.batch(per_host_batch, drop_remainder=True)
  ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(2)


class _EpochSplits:
  """The split of each epoch of a `per_epoch` split, from encoded rows: epoch 0 is the split
  itself; when epoch e is first read, epoch e + 1 is drawn in a background thread (drawing a
  real epoch's specs takes seconds), and the last two are kept."""

  def __init__(self, split: Split):
    self.split, self.n = split, len(split)
    self._kept: Dict[int, object] = {}
    self._lock = threading.Lock()
    self._pool = None

  def _start(self, epoch: int):
    import concurrent.futures
    if epoch not in self._kept:
      if self._pool is None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="next_epoch")
      self._kept[epoch] = self._pool.submit(self.split.per_epoch, epoch)

  def of(self, rows: np.ndarray) -> Tuple[Split, np.ndarray]:
    if self.split.per_epoch is None:
      return self.split, rows
    epoch = int(rows[0]) // self.n
    if epoch == 0:
      with self._lock:
        self._start(1)
      return self.split, rows
    with self._lock:
      self._start(epoch)
      future = self._kept[epoch]
      self._start(epoch + 1)
      for old in [e for e in self._kept if e < epoch]:
        del self._kept[old]
    source = future.result()
    if len(source) != self.n:
      raise ValueError(f"epoch {epoch} of split {self.split.name!r} has {len(source)} rows, "
                       f"epoch 0 {self.n}")
    return source, rows - epoch * self.n


_LIVE_ITERATORS: "weakref.WeakSet" = weakref.WeakSet()


@atexit.register
def _close_live_iterators():
  # A tf.data iterator destroyed during interpreter shutdown while a NumPy gather is in flight
  # waits forever for the GIL; closing the unfinished ones before shutdown avoids the hang.
  for generator in list(_LIVE_ITERATORS):
    generator.close()


def _iterate(ds: tf.data.Dataset) -> Iterator[dict]:
  """The batches of `ds` as NumPy dicts (a generator; unfinished ones are closed at exit)."""
  def generate():
    iterator = ds.as_numpy_iterator()
    try:
      yield from iterator
    finally:
      del iterator
  generator = generate()
  _LIVE_ITERATORS.add(generator)
  return generator


def global_step_rows(num_examples: int, global_batch: int, seed: int, step: int) -> np.ndarray:
  """The (global_batch,) row indices of global training step `step`; host p of P takes the
  p-th contiguous slice. The same order feeds the tf.data and the accelerator paths."""
  steps = steps_per_epoch(num_examples, global_batch)
  epoch, within = divmod(step, steps)
  order = epoch_permutation(num_examples, seed, epoch)
  return order[within * global_batch:(within + 1) * global_batch]


def train_batches(split: Split, *, global_batch: int, seed: int, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1,
                  num_epochs: Optional[int] = None,
                  columns: Optional[Sequence[str]] = None) -> Iterator[dict]:
  """Endless (or `num_epochs`) training batches of this host, from global step `start_step`
  (the columns of `batch_columns(split, columns)` and `mask`).

  One tf.data pipeline serves every epoch (no per-epoch set-up); each epoch's order is drawn
  when the pipeline reaches it.
  """
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by {process_count} hosts")
  per_host = global_batch // process_count
  steps = steps_per_epoch(len(split), global_batch)
  first_epoch, skip = divmod(start_step, steps)

  offset = len(split) if split.per_epoch is not None else 0   # rows carry their epoch

  def epoch_rows(epoch):
    epoch = int(epoch)
    order = epoch_permutation(len(split), seed, epoch)[: steps * global_batch]
    order = order.reshape(steps, process_count, per_host)[:, process_index]
    return (order[skip if epoch == first_epoch else 0:].reshape(-1).astype(np.int64)
            + epoch * offset)

  last_epoch = np.iinfo(np.int64).max if num_epochs is None else num_epochs
  rows = tf.data.Dataset.range(first_epoch, last_epoch).map(
      lambda epoch: tf.numpy_function(epoch_rows, [epoch], tf.int64)).unbatch()
  rows = rows.map(lambda row: (row, True))
  return _iterate(_gather_dataset(split, rows, per_host, columns))


def eval_batches(split: Split, *, global_batch: int, process_index: int = 0,
                 process_count: int = 1,
                 columns: Optional[Sequence[str]] = None) -> Iterator[dict]:
  """Every example once, padded with masked rows to whole global batches; this host's part.

  The tf.data pipeline is built once per split and batch layout and reused by later calls
  (evaluation every few epochs)."""
  names = batch_columns(split, columns)
  key = ("eval", global_batch, process_index, process_count, names)
  if key not in split.pipelines:
    split.pipelines[key] = _eval_dataset(split, global_batch, process_index, process_count,
                                         names)
  return _iterate(split.pipelines[key])


def _eval_dataset(split: Split, global_batch: int, process_index: int,
                  process_count: int, columns: Sequence[str]) -> tf.data.Dataset:
  per_host = global_batch // process_count
  num_batches = max(1, math.ceil(len(split) / global_batch))
  rows = np.arange(num_batches * global_batch)
  mask = rows < len(split)
  rows = np.where(mask, rows, 0)
  rows = rows.reshape(num_batches, process_count, per_host)[:, process_index].reshape(-1)
  mask = mask.reshape(num_batches, process_count, per_host)[:, process_index].reshape(-1)
  ds = tf.data.Dataset.from_tensor_slices((rows.astype(np.int64), mask))
  return _gather_dataset(split, ds, per_host, columns)
