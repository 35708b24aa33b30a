"""Evaluators: functions of a whole split's named outputs that stream (name, value) metrics.

An evaluator is `(outputs, split) → iterator of (name, value)`: `outputs` maps output names
(`Task.outputs`: logits, embedding, track_logits, waveforms, …) to (N, …) arrays in the split's
order, `split` gives the columns (labels, recording devices, …). A task lists its evaluators;
the train and evaluate stages run them (`scalars`) over any output they name.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, Iterator, Mapping, Sequence, Tuple

import numpy as np

from jax_asc.eval import metrics, s5_metrics

Evaluator = Callable[[Mapping[str, np.ndarray], Any], Iterator[Tuple[str, Any]]]


def classification(output: str = "logits", label: str = "label",
                   device: str = "recording_device") -> Evaluator:
  """Single-label classification of output `output` (N, C) against column `label`: accuracy,
  macro_accuracy, log_loss, and the accuracy of each device group (`group_real`, …) of column
  `device` (when the split has it). Unlabelled examples (−1) are not scored."""
  def evaluate(outputs, split):
    if output not in outputs:
      raise KeyError(f"classification evaluator reads output {output!r}; outputs: "
                     f"{sorted(outputs)}")
    devices = split.get(device)
    devices = np.zeros(len(split), np.int32) if devices is None else np.asarray(devices)
    result = metrics.classification_metrics(outputs[output], np.asarray(split[label]), devices,
                                            list(split.classes), list(split.devices))
    for key in ("accuracy", "macro_accuracy", "log_loss"):
      yield key, result[key]
    for group, value in result["device_groups"].items():
      yield f"group_{group}", value
  return evaluate


def track_labels(track_logits: np.ndarray) -> np.ndarray:
  """(N, K, C) track logits → (N, K) argmax classes (the last class is silence)."""
  return np.asarray(track_logits).argmax(-1)


def pit_cross_entropy(track_logits: np.ndarray, labels: np.ndarray) -> float:
  """Mean over mixtures of min over track permutations of the mean track cross-entropy (the
  T4 baseline's validation loss, which checkpoints are selected on)."""
  z = np.asarray(track_logits, np.float64)
  log_p = z - z.max(-1, keepdims=True)
  log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
  k = z.shape[1]
  costs = [-np.mean([log_p[np.arange(len(z)), perm[i], labels[:, i]] for i in range(k)], axis=0)
           for perm in itertools.permutations(range(k))]
  return float(np.mean(np.min(costs, axis=0)))


def tagging(output: str = "track_logits", labels: str = "labels") -> Evaluator:
  """K-track tagging (report 004) of output `output` (N, K, C) against column `labels` (N, K),
  silence = class C − 1: accuracy_mixture and accuracy_source in % (`s5_metrics`, silence
  ignored) and pit_ce, the permutation-invariant cross-entropy."""
  def evaluate(outputs, split):
    if output not in outputs:
      raise KeyError(f"tagging evaluator reads output {output!r}; outputs: {sorted(outputs)}")
    logits = np.asarray(outputs[output])
    reference = np.asarray(split[labels])
    silence = logits.shape[-1] - 1
    predicted = track_labels(logits)
    result = s5_metrics.label_accuracies(zip(predicted.tolist(), reference.tolist()), silence)
    yield "accuracy_mixture", result["accuracy_mixture"]
    yield "accuracy_source", result["accuracy_source"]
    yield "pit_ce", pit_cross_entropy(logits, reference)
  return evaluate


def scalars(evaluators: Sequence[Evaluator], outputs: Mapping[str, np.ndarray], split,
            prefix: str) -> Dict[str, float]:
  """{`prefix/name`: value} of every evaluator (a name given twice is an error)."""
  out: Dict[str, float] = {}
  for evaluate in evaluators:
    for name, value in evaluate(outputs, split):
      key = f"{prefix}/{name}"
      if key in out:
        raise ValueError(f"two evaluators give the metric {key!r}")
      out[key] = float(value)
  return out
