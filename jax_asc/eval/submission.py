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


def validate_submission(path: str, filenames: Sequence[str], classes: Sequence[str],
                        tolerance: float = 1e-4) -> int:
  """Checks a submission file against the list it answers; returns its number of rows.

  The header is `filename, scene_label, <classes>` (TAB-separated), then exactly one row per
  listed file in the list's order; each row's probabilities are finite, in [0, 1] and sum to 1
  (within `tolerance`: six decimals each), and its label is its most probable class. Raises
  ValueError naming the file, row and what was expected otherwise.
  """
  with open(path, newline="") as f:
    rows = list(csv.reader(f, delimiter="\t"))
  header = ["filename", "scene_label", *classes]
  if not rows or rows[0] != header:
    raise ValueError(f"{path}: header is {rows[0] if rows else None}, expected {header}")
  body = rows[1:]
  if len(body) != len(filenames):
    raise ValueError(f"{path}: {len(body)} rows, expected one per listed file ({len(filenames)})")
  for i, (row, expected) in enumerate(zip(body, filenames), start=2):
    if len(row) != len(header):
      raise ValueError(f"{path}, line {i}: {len(row)} fields, expected {len(header)}")
    if row[0] != expected:
      raise ValueError(f"{path}, line {i}: filename {row[0]!r}, expected {expected!r} "
                       "(one row per listed file, in the list's order)")
    try:
      probs = np.array([float(v) for v in row[2:]])
    except ValueError as e:
      raise ValueError(f"{path}, line {i}: a probability is not a number ({e})") from e
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1:
      raise ValueError(f"{path}, line {i}: probabilities outside [0, 1]: {row[2:]}")
    if abs(probs.sum() - 1.0) > tolerance:
      raise ValueError(f"{path}, line {i}: probabilities sum to {probs.sum():.6f}, expected 1")
    if row[1] != classes[int(probs.argmax())]:
      raise ValueError(f"{path}, line {i}: scene_label {row[1]!r} is not the most probable "
                       f"class {classes[int(probs.argmax())]!r}")
  return len(body)
