"""Parameter and MAC counts of any Flax Linen model, counted the way DCASE Task 1 counts them.

The challenge uses `torchinfo.summary(model, input_size=(1, 1, F, T)).total_mult_adds` on the model
alone (frontend excluded): a layer with a `kernel` (convolution, dense) counts
`kernel.size · output positions` (+ `bias.size · output positions`), any other layer counts the
size of its weight and bias once (BatchNorm, LayerNorm: 2C; GRN's γ/β are neither, so 0, as in
torchinfo), and activations, pooling and additions count 0. Here every module call is intercepted, so the count follows the modules
the network actually runs, with the output shape each call produced.

Parameter memory is Σ numel × bytes per element over parameters only (BatchNorm running
statistics are not counted), as `helpers/complexity.py` of the DCASE 2025 baseline does.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax_asc import native

DCASE_MAX_PARAM_BYTES = 128_000
DCASE_MAX_MACS = 30_000_000
BYTES_PER_PARAM = {"float32": 4, "float16": 2, "int8": 1}


@dataclasses.dataclass
class LayerCount:
  path: str
  kind: str
  output_shape: tuple
  params: int
  macs: int


@dataclasses.dataclass
class Complexity:
  layers: List[LayerCount]
  input_shape: tuple

  @property
  def params(self) -> int:
    return sum(layer.params for layer in self.layers)

  @property
  def macs(self) -> int:
    return sum(layer.macs for layer in self.layers)

  def param_bytes(self, dtype: str = "float16") -> int:
    return self.params * BYTES_PER_PARAM[dtype]

  def within_dcase_limits(self, dtype: str = "float16") -> bool:
    return self.param_bytes(dtype) <= DCASE_MAX_PARAM_BYTES and self.macs <= DCASE_MAX_MACS

  def as_dict(self, dtype: str = "float16") -> Dict[str, Any]:
    return {
        "input_shape": list(self.input_shape),
        "params": self.params,
        "macs": self.macs,
        "param_bytes": {k: self.params * v for k, v in BYTES_PER_PARAM.items()},
        "limit_dtype": dtype,
        "within_dcase_limits": self.within_dcase_limits(dtype),
        "layers": [dict(path=l.path, kind=l.kind, output_shape=list(l.output_shape),
                        params=l.params, macs=l.macs) for l in self.layers],
    }

  def table(self, dtype: str = "float16") -> str:
    """Markdown: per-layer rows, totals, parameter memory and the DCASE pass/fail line."""
    rows = ["| layer | type | output | params | MACs |", "|---|---|---|---:|---:|"]
    for l in self.layers:
      shape = "×".join(str(d) for d in l.output_shape[1:])
      rows.append(f"| {l.path} | {l.kind} | {shape} | {l.params:,} | {l.macs:,} |")
    rows.append(f"| **total** | | | **{self.params:,}** | **{self.macs:,}** |")
    memory = ", ".join(f"{k} {self.params * v:,} B" for k, v in BYTES_PER_PARAM.items())
    ok = self.within_dcase_limits(dtype)
    verdict = (f"DCASE limits ({DCASE_MAX_PARAM_BYTES:,} B of {dtype} parameters, "
               f"{DCASE_MAX_MACS:,} MACs): {'PASS' if ok else 'FAIL'} "
               f"({self.param_bytes(dtype):,} B, {self.macs:,} MACs)")
    shape = "×".join(str(d) for d in self.input_shape)
    return "\n".join([f"Complexity for input {shape}", ""] + rows +
                     ["", f"Parameter memory: {memory}", verdict])


def _direct_params(module: nn.Module) -> Dict[str, Any]:
  """The parameters a module owns itself (not those of its submodules)."""
  params = module.variables.get("params", {})
  return {k: v for k, v in params.items() if not isinstance(v, dict) and hasattr(v, "shape")}


def count(model: nn.Module, input_shape: Sequence[int], **apply_kwargs) -> Complexity:
  """Counts parameters and MACs of `model` for one input of `input_shape` (batch 1 included).

  Runs abstractly (`jax.eval_shape`): nothing is computed. `apply_kwargs` go to `model.apply`
  (the model runs in inference mode, `train=False`, when it accepts that keyword).
  """
  input_shape = tuple(input_shape)
  records: List[LayerCount] = []
  seen_params = set()

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name != "__call__":
      return out
    module = context.module
    own = _direct_params(module)
    if not own:
      return out
    path = "/".join(module.path) or type(module).__name__
    first_call = path not in seen_params
    seen_params.add(path)
    n_params = sum(int(np.prod(v.shape)) for v in own.values()) if first_call else 0
    y = out[0] if isinstance(out, (tuple, list)) else out
    out_shape = tuple(y.shape) if hasattr(y, "shape") else ()
    kernel = own.get("kernel")
    if kernel is not None and len(kernel.shape) >= 2:
      out_features = kernel.shape[-1]
      positions = int(np.prod(out_shape)) // (input_shape[0] * out_features)
      macs = int(np.prod(kernel.shape)) * positions
      if "bias" in own:
        macs += int(np.prod(own["bias"].shape)) * positions
    else:
      # torchinfo counts only tensors named weight/bias (Flax: scale/bias) of such layers, so
      # GRN's γ/β (d23) add parameters but no MACs.
      macs = sum(int(np.prod(v.shape)) for k, v in own.items() if k in ("scale", "bias"))
    records.append(LayerCount(path, type(module).__name__, out_shape, n_params, macs))
    return out

  x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, **apply_kwargs), x)
  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, x: model.apply(v, x, **apply_kwargs), variables, x)
  total = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables.get("params", {})))
  counted = sum(r.params for r in records)
  if counted != total:
    raise RuntimeError(f"counted {counted} parameters in module calls but the model has {total}: "
                       "some parameters are used outside a module's own __call__")
  return Complexity(records, input_shape)


def xla_flops(model: nn.Module, variables, input_shape: Sequence[int], **apply_kwargs) -> float:
  """XLA's own flop estimate for one forward pass (compiled cost analysis), with the layers in
  their XLA forms: XLA cannot count inside the native CPU kernels. `variables` may be arrays or
  their shapes (`jax.eval_shape(model.init, ...)`)."""
  fn = jax.jit(lambda v, x: model.apply(v, x, **apply_kwargs))
  with native.disabled():
    compiled = fn.lower(variables, jnp.zeros(input_shape, jnp.float32)).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis["flops"])
