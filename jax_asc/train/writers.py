"""Metric writers of a run: TensorBoard events, a JSON-lines file and the console log (clu)."""
from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import jax
import numpy as np
from clu import metric_writers


class JsonLinesWriter(metric_writers.MetricWriter):
  """Appends one JSON object per write_scalars call: {"step": …, "time": …, name: value, …}.

  Only scalars and hyper-parameters have a JSON form; images, audio, histograms and the like go
  to TensorBoard (the other writer of `create`) and are not repeated here.
  """

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    self._file = open(path, "a")

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    row = {"step": int(step), "time": time.time()}
    row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    self._file.write(json.dumps(row) + "\n")

  def write_hparams(self, hparams: Mapping[str, Any]):
    self._file.write(json.dumps({"hparams": {k: str(v) for k, v in hparams.items()}}) + "\n")

  def write_summaries(self, step, values, metadata=None):
    pass   # tensor summaries: TensorBoard only

  def write_images(self, step, images):
    pass   # TensorBoard only

  def write_videos(self, step, videos):
    pass   # TensorBoard only

  def write_audios(self, step, audios, *, sample_rate):
    pass   # TensorBoard only

  def write_texts(self, step, texts):
    pass   # TensorBoard only

  def write_histograms(self, step, arrays, num_buckets=None):
    pass   # TensorBoard only

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


def create(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard + console on host 0, JSON lines at `<workdir>/metrics.jsonl`; logging elsewhere."""
  if jax.process_index() > 0:
    return metric_writers.LoggingWriter()
  return metric_writers.MultiWriter([
      metric_writers.create_default_writer(os.path.join(workdir, "tensorboard")),
      JsonLinesWriter(os.path.join(workdir, "metrics.jsonl")),
  ])
