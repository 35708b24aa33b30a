"""DCASE Task 1 submission file: TAB-separated `filename, scene_label, <one probability column per
class>` (the 2025 `output.csv` layout), rows keyed by filename."""
from __future__ import annotations

import csv
from typing import Sequence

import numpy as np

from jax_asc.eval.metrics import log_softmax


def write_submission(path: str, filenames: Sequence[str], logits: np.ndarray,
                     classes: Sequence[str]) -> None:
  """Writes one row per file: the argmax class and the softmax probabilities of `logits` (N, C)."""
  logits = np.asarray(logits, np.float64)
  if logits.shape != (len(filenames), len(classes)):
    raise ValueError(f"logits have shape {logits.shape}, expected ({len(filenames)}, "
                     f"{len(classes)}) for {len(filenames)} files and {len(classes)} classes")
  if len(set(filenames)) != len(filenames):
    raise ValueError("duplicate filenames in the submission")
  probs = np.exp(log_softmax(logits))
  with open(path, "w", newline="") as f:
    writer = csv.writer(f, delimiter="\t", lineterminator="\n")
    writer.writerow(["filename", "scene_label", *classes])
    for name, p in zip(filenames, probs):
      writer.writerow([name, classes[int(p.argmax())], *(f"{v:.6f}" for v in p)])
