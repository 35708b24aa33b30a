"""Pure, jittable loss functions (arrays in, scalars out), computed in float32.

| module | losses |
|---|---|
| `classification` | cross-entropy with hard, soft (mixup) and smoothed labels |
| `distillation` | Hinton KD (two reductions), teacher ensembles, report 000 eq. 1, 001 eq. 3, 003 eq. 4 |
| `dafa` | DCSL, GDAL, report 000 eq. 2 |
| `features` | DFM, SSFM (report 001 eq. 4–5) |
| `similarity` | linear CKA (biased, debiased, minibatch), cosine distance, report 004 eq. 4 |
| `contrastive` | SupCon, soft SupCon (report 003 eq. 1), InfoNCE, CRD memory bank (eq. 3) |
| `pit` | PIT cross-entropy, PI-KD (report 004 eq. 2), SD objective (eq. 3), EMA (eq. 1) |

`combine` forms a config-weighted sum of named terms, e.g. `config.loss.weights = {"ce": 0.05,
"kd": 1.0, "ssfm": 0.1}`.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp


def combine(terms: Mapping[str, jax.Array], weights: Mapping[str, float]) -> tuple:
  """Σ_name weights[name]·terms[name] over the weighted names; returns (loss, terms as metrics).

  Every weighted name must be a computed term (a typo is an error naming the terms there are);
  computed terms without a weight are reported as metrics only.
  """
  unknown = sorted(set(weights) - set(terms))
  if unknown:
    raise KeyError(f"loss weights name unknown terms {unknown}; terms: {sorted(terms)}")
  total = jnp.zeros((), jnp.float32)
  for name, weight in weights.items():
    if weight:
      total = total + float(weight) * terms[name].astype(jnp.float32)
  return total, dict(terms)
