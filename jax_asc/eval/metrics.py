"""Classification metrics of an evaluation: plain NumPy over all (unpadded) predictions.

`macro_accuracy` (the DCASE Task 1 ranking metric) is the mean of the class-wise accuracies;
device groups (real / seen / unseen) pool the examples of their devices, as the reports do.
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence

import numpy as np

# Device groups as the DCASE reports tabulate them (TAU Urban Acoustic Scenes 2020-2025).
DEVICE_GROUPS = {
    "real": ("a", "b", "c"),
    "seen": ("s1", "s2", "s3"),
    "unseen": ("s4", "s5", "s6"),
}


def log_softmax(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
  """(n_classes, n_classes) counts, rows = true class, columns = predicted class."""
  matrix = np.zeros((n_classes, n_classes), np.int64)
  np.add.at(matrix, (labels, predictions), 1)
  return matrix


def classification_metrics(logits: np.ndarray, labels: np.ndarray, devices: np.ndarray,
                           class_names: Sequence[str], device_names: Sequence[str],
                           device_groups: Mapping[str, Sequence[str]] = DEVICE_GROUPS) -> Dict:
  """All metrics of a labelled evaluation.

  Args:
    logits: (N, C) float; labels: (N,) int (examples with label −1 are not scored);
    devices: (N,) int index into `device_names`.
  Returns:
    dict with accuracy, macro_accuracy, log_loss, count, per_class {name: acc},
    per_device {name: acc}, device_groups {group: acc}, confusion (C×C list).
    Classes or devices without examples are absent from the per-* dicts.
  """
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels)
  devices = np.asarray(devices)
  scored = labels >= 0
  logits, labels, devices = logits[scored], labels[scored], devices[scored]
  if len(labels) == 0:
    raise ValueError("no labelled examples to evaluate")
  predictions = logits.argmax(axis=-1)
  correct = predictions == labels
  per_class = {name: float(correct[labels == c].mean())
               for c, name in enumerate(class_names) if np.any(labels == c)}
  per_device = {name: float(correct[devices == d].mean())
                for d, name in enumerate(device_names) if np.any(devices == d)}
  groups = {}
  for group, members in device_groups.items():
    ids = [device_names.index(m) for m in members if m in device_names]
    in_group = np.isin(devices, ids)
    if in_group.any():
      groups[group] = float(correct[in_group].mean())
  nll = -log_softmax(logits)[np.arange(len(labels)), labels]
  return dict(
      count=int(len(labels)), accuracy=float(correct.mean()),
      macro_accuracy=float(np.mean(list(per_class.values()))), log_loss=float(nll.mean()),
      per_class=per_class, per_device=per_device, device_groups=groups,
      confusion=confusion_matrix(labels, predictions, len(class_names)).tolist())


def scalar_summary(metrics: Dict, prefix: str) -> Dict[str, float]:
  """The scalar metrics as flat `prefix/name` entries (for metric writers and checkpoints)."""
  out = {f"{prefix}/{k}": metrics[k] for k in ("accuracy", "macro_accuracy", "log_loss")}
  out.update({f"{prefix}/group_{k}": v for k, v in metrics["device_groups"].items()})
  return out
