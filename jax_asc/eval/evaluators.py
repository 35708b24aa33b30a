"""Evaluators: functions of a whole split's named outputs that stream (name, value) metrics.

An evaluator is `(outputs, split) → iterator of (name, value)`: `outputs` maps output names
(`Task.outputs`: logits, embedding, track_logits, waveforms, …) to (N, …) arrays in the split's
order, `split` gives the columns (labels, recording devices, …). A task lists its evaluators;
the train and evaluate stages run them (`scalars`) over any output they name.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Mapping, Sequence, Tuple

import numpy as np

from jax_asc.eval import metrics

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
