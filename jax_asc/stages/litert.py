"""JAX functions to LiteRT (TFLite) flatbuffers, and the LiteRT interpreter to run them.

The documented JAX path: the function is traced once with XLA's forms (the native CPU kernels of
jax_asc/native are custom calls that no converter knows, so they are switched off while tracing),
wrapped by `jax2tf` (its StableHLO carried in a SavedModel's XlaCallModule) and converted by
`tf.lite.TFLiteConverter` to TFLite builtin operators only (no TF "flex" ops, so the file runs in
the plain LiteRT runtime). Shapes are static: batch 1, the run's clip length.

Formats (`FORMATS`):
  float32   as trained.
  float16   weights stored as float16 (`Optimize.DEFAULT` with float16 as the supported type);
            the interpreter dequantises them on load and computes in float32.
  int8      post-training integer quantisation: weights int8 per output channel, activations
            int8 with ranges calibrated on a representative set (a few hundred training clips);
            input and output stay float32 (a quantise op in, a dequantise op out). An operator
            without an int8 kernel stays in float (`Interpreter.float_operators` lists them;
            CP-Mobile has none).

A function LiteRT cannot express is an error naming the operation: a custom call (found in the
lowered StableHLO before conversion) or an operator the converter rejects (from its message).
"""
from __future__ import annotations

import functools
import os
import re
import tempfile
import time
from typing import Callable, Iterable, List, Optional

import jax
import numpy as np

from jax_asc import native

FORMATS = ("float32", "float16", "int8")


class UnsupportedOpError(ValueError):
  """The function uses operations LiteRT's builtin operator set lacks (named in `ops`)."""

  def __init__(self, ops: List[str], detail: str):
    super().__init__(f"LiteRT cannot export this model: no builtin operator for {ops}. {detail}")
    self.ops = ops


def custom_calls(fn: Callable, example: np.ndarray) -> List[str]:
  """The custom-call targets in the StableHLO of `fn` traced on `example` with XLA's forms."""
  with native.disabled():
    text = jax.jit(fn).lower(example).as_text()
  return sorted(set(re.findall(r"stablehlo\.custom_call @([\w.]+)", text)))


def _rejected_ops(message: str) -> List[str]:
  """Operator names in a converter error ("'vhlo.sort_v1' op is not part of …")."""
  ops = re.findall(r"'(?:vhlo|stablehlo|mhlo|chlo|tf|tfl)\.([A-Za-z_0-9]+)' op is", message)
  ops += re.findall(r"Custom ops: ([\w, ]+)", message)
  cleaned = [re.sub(r"_v\d+$", "", op.strip()) for op in ops]
  return sorted(set(o for o in cleaned if o))


def convert(fn: Callable, example: np.ndarray, fmt: str = "float32",
            calibration: Optional[Callable[[], Iterable[np.ndarray]]] = None,
            name: str = "input") -> bytes:
  """The LiteRT flatbuffer of `fn` (one float32 array of `example`'s shape → arrays).

  fmt: one of `FORMATS`; "int8" needs `calibration`, a callable giving representative inputs
  (each of `example`'s shape). Raises UnsupportedOpError naming what LiteRT lacks.
  """
  import tensorflow as tf
  from jax.experimental import jax2tf
  if fmt not in FORMATS:
    raise ValueError(f"export format must be one of {FORMATS}, got {fmt!r}")
  if fmt == "int8" and calibration is None:
    raise ValueError("the int8 export needs calibration inputs (a representative dataset)")
  example = np.asarray(example, np.float32)
  calls = custom_calls(fn, example)
  if calls:
    raise UnsupportedOpError(calls, "These are custom calls (platform kernels such as LAPACK's "
                             "or an FFI kernel): write the layer with XLA's own operations")
  with native.disabled(), tempfile.TemporaryDirectory() as folder:
    traced = tf.function(jax2tf.convert(fn, with_gradient=False), autograph=False,
                         input_signature=[tf.TensorSpec(example.shape, tf.float32, name=name)])
    module = tf.Module()
    module.f = traced
    tf.saved_model.save(module, folder, signatures=traced.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_saved_model(folder)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if fmt == "float16":
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
      converter.target_spec.supported_types = [tf.float16]
    elif fmt == "int8":
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
      converter.representative_dataset = lambda: (
          [np.asarray(x, np.float32).reshape(example.shape)] for x in calibration())
    try:
      return converter.convert()
    except Exception as error:   # tf.lite's ConverterError and friends
      message = str(error)
      ops = _rejected_ops(message)
      if not ops:
        raise
      raise UnsupportedOpError(ops, "The converter's message ends: "
                               + message.strip().splitlines()[-1][:300]) from error


class Interpreter:
  """A LiteRT flatbuffer in the `ai_edge_litert` interpreter: one input, one output."""

  def __init__(self, model: bytes, threads: int = 1):
    from ai_edge_litert.interpreter import Interpreter as LiteRT
    self._model = model
    self._interpreter = LiteRT(model_content=model, num_threads=threads)
    self._interpreter.allocate_tensors()
    self.input = self._interpreter.get_input_details()[0]
    self.output = self._interpreter.get_output_details()[0]

  @property
  def input_shape(self) -> tuple:
    return tuple(int(d) for d in self.input["shape"])

  def __call__(self, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32).reshape(self.input_shape)
    self._interpreter.set_tensor(self.input["index"], x)
    self._interpreter.invoke()
    return np.array(self._interpreter.get_tensor(self.output["index"]), np.float32)

  def latency_ms(self, x: np.ndarray, runs: int = 20) -> float:
    """Median wall time of one invocation (ms), after one warm-up call."""
    self(x)
    times = []
    for _ in range(runs):
      start = time.perf_counter()
      self(x)
      times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))

  @functools.cached_property
  def _graph(self):
    from ai_edge_litert.interpreter import Interpreter as LiteRT, OpResolverType
    plain = LiteRT(model_content=self._model,
                   experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    plain.allocate_tensors()
    return plain._get_ops_details(), plain.get_tensor_details()

  def graph(self):
    """(operators [{op_name, inputs, outputs}], tensors [{index, dtype, …}]) of the graph as
    stored, before the default (XNNPACK) delegate replaces nodes by DELEGATE."""
    return self._graph

  def operators(self) -> List[str]:
    """The builtin operator names of the graph, in order (e.g. CONV_2D, FULLY_CONNECTED)."""
    return [op["op_name"] for op in self.graph()[0]]

  def float_operators(self) -> List[str]:
    """Operators that compute in float32 (an output is float32), quantise/dequantise aside:
    in an int8 graph, those without an int8 kernel."""
    operators, tensors = self.graph()
    dtypes = {t["index"]: t["dtype"] for t in tensors}
    return sorted({op["op_name"] for op in operators
                   if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE")
                   and any(dtypes.get(o) == np.float32 for o in op["outputs"])})


def save(model: bytes, path: str) -> int:
  """Writes a flatbuffer atomically; returns its size in bytes."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "wb") as f:
    f.write(model)
  os.replace(path + ".tmp", path)
  return len(model)
