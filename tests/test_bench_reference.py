"""The benchmark's PyTorch CP-Mobile (benchmarks/torch_reference.py) is the same network as ours:
the same parameter tensors (sizes) and counts, the same output shape. Skips without PyTorch."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from jax_asc import models

torch = pytest.importorskip("torch", reason="PyTorch (make reference-deps) is not installed")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import torch_reference  # noqa: E402


@pytest.mark.parametrize("variant,frames,count", [("dcase25", 65, 61_148),
                                                  ("dcase23", 64, 126_952)])
def test_torch_reference_has_our_parameters(variant, frames, count):
  reference = torch_reference.CPMobile(**torch_reference.VARIANTS[variant]).eval()
  ours = models.build(common.cp_mobile(variant))
  variables = jax.eval_shape(lambda x: ours.init(jax.random.key(0), x, train=False),
                             jax.ShapeDtypeStruct((1, 256, frames), jnp.float32))
  our_sizes = sorted(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
  their_sizes = sorted(p.numel() for p in reference.parameters())
  assert sum(our_sizes) == torch_reference.count_parameters(reference) == count
  assert our_sizes == their_sizes
  with torch.no_grad():
    logits = reference(torch.zeros(2, 1, 256, frames))
  assert tuple(logits.shape) == (2, 10)
