"""Post-training int8 quantisation of a model's parameters, simulated in float ("fake quant").

What a student deployed with int8 parameters computes, so its accuracy can be measured beside
float32 and float16 (`evaluate.int8`), and its parameter memory counted at one byte each
(`complexity.param_dtype = "int8"`, the DCASE 2025 `get_model_size_bytes` way).

- Weight tensors (`kernel`, ndim ≥ 2: convolutions HWIO, dense IO) are quantised per output
  channel (the last axis), symmetric: scale_c = max|w[…, c]| / 127, q = round(w / scale_c) in
  [−127, 127], w' = q · scale_c.
- Every other parameter (biases, norm scales and shifts, GRN γ/β) per tensor, the same way.
- Batch-norm running statistics are buffers, not parameters: they stay float (as the DCASE
  count leaves them out; a deployed model folds them into the neighbouring convolution).
- Activations stay float: this is weight-only quantisation, no activation calibration is
  involved. A full-integer runtime (LiteRT int8 with calibrated activations) is the export
  path's business.

All-zero tensors (or channels) stay zero (scale 1). Pure NumPy/JAX, no state.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import jax
import numpy as np

INT8_MAX = 127


def _scales(w: np.ndarray, per_channel: bool) -> np.ndarray:
  axes = tuple(range(w.ndim - 1)) if per_channel else None
  peak = np.max(np.abs(w), axis=axes, keepdims=per_channel)
  return np.where(peak > 0, peak / INT8_MAX, 1.0).astype(np.float32)


def quantize_tensor(w, per_channel: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(int8 values, float32 scales, dequantised float32 tensor) of one parameter tensor."""
  w = np.asarray(w, np.float32)
  scale = _scales(w, per_channel and w.ndim >= 2)
  q = np.clip(np.round(w / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
  return q, np.asarray(scale, np.float32), q.astype(np.float32) * scale


def fake_quantize_int8(params) -> Tuple[Any, Dict[str, int]]:
  """(params with every tensor replaced by its int8 dequantised value, summary).

  summary: `params` (numbers quantised: one byte each), `scales` (float32 scales stored beside
  them), `max_abs_error` (largest |w − w'| over all tensors, ≤ half a step of its scale).
  """
  counts = {"params": 0, "scales": 0}
  worst = [0.0]

  def one(path, leaf):
    name = getattr(path[-1], "key", str(path[-1]))
    per_channel = name == "kernel" and np.ndim(leaf) >= 2
    _, scale, dequantised = quantize_tensor(leaf, per_channel)
    counts["params"] += int(np.size(leaf))
    counts["scales"] += int(np.size(scale))
    worst[0] = max(worst[0], float(np.max(np.abs(dequantised - np.asarray(leaf, np.float32)),
                                      initial=0.0)))
    return dequantised.astype(np.asarray(leaf).dtype)

  quantised = jax.tree_util.tree_map_with_path(one, jax.device_get(params))
  return quantised, dict(counts, max_abs_error=worst[0])
