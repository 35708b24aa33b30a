"""Native CPU kernels (XLA FFI) for the operations XLA's CPU backend runs slowly.

`cpu_kernels.cc` holds the depthwise convolution (forward pass and both gradients; forward and
kernel gradient also with a batch norm's apply + ReLU fused on their input), the 1×1 weight
gradient, the 1×1 convolution with the same fusion, the stem convolutions, the batch-norm
statistics and gradient sums, and the short-time Fourier transform (with the pre-emphasis and
centre padding) and the mel projection.
It is compiled on first use with the system C++ compiler (`$CXX`, else `c++`) against the XLA FFI
headers shipped with jaxlib, for this machine's CPU (`-march=native`), and cached under
`$JAX_ASC_KERNEL_DIR` (default `~/.cache/jax_asc/kernels`), keyed by the source, the jaxlib
version, the flags and the CPU. Without a compiler, with `JAX_ASC_CPU_KERNELS=0`, or if the build
fails (a warning says why), `available()` is False and the callers use their pure-XLA forms:
the same results, slower on CPU. GPUs and TPUs never use these kernels (callers choose with
`lax.platform_dependent`).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from typing import Optional

import jax
import jaxlib

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_kernels.cc")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")
# FFI target name → exported handler symbol.
TARGETS = {"jax_asc_depthwise_forward": "JaxAscDepthwiseForward",
           "jax_asc_depthwise_input_grad": "JaxAscDepthwiseInputGrad",
           "jax_asc_depthwise_kernel_grad": "JaxAscDepthwiseKernelGrad",
           "jax_asc_affine_relu_depthwise_forward": "JaxAscAffineReluDepthwiseForward",
           "jax_asc_affine_relu_depthwise_kernel_grad": "JaxAscAffineReluDepthwiseKernelGrad",
           "jax_asc_moments": "JaxAscMoments",
           "jax_asc_norm_grad_sums": "JaxAscNormGradSums",
           "jax_asc_mel_spectrogram": "JaxAscMelSpectrogram",
           "jax_asc_matmul_tn": "JaxAscMatmulTN",
           "jax_asc_affine_relu_matmul": "JaxAscAffineReluMatmul",
           "jax_asc_affine_relu_matmul_moments": "JaxAscAffineReluMatmulMoments",
           "jax_asc_matmul_moments": "JaxAscMatmulMoments",
           "jax_asc_affine_relu_matmul_tn": "JaxAscAffineReluMatmulTN",
           "jax_asc_conv_forward": "JaxAscConvForward",
           "jax_asc_conv_kernel_grad": "JaxAscConvKernelGrad"}


def _cache_dir() -> str:
  default = os.path.join(os.path.expanduser("~"), ".cache", "jax_asc", "kernels")
  return os.environ.get("JAX_ASC_KERNEL_DIR", default)


def _cpu_identity() -> str:
  """What `-march=native` depends on: the CPU model and its feature flags."""
  lines = []
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith(("model name", "flags", "Features", "CPU part")):
          lines.append(line.strip())
          if len(lines) >= 3:
            break
  except OSError:
    pass
  return platform.machine() + "\n" + "\n".join(lines)


def _build(compiler: str) -> str:
  """Compiles the kernels (once per cache key) and returns the shared library's path."""
  with open(SOURCE, "rb") as f:
    source = f.read()
  key = hashlib.sha256(b"\0".join([source, jaxlib.__version__.encode(), " ".join(FLAGS).encode(),
                                   compiler.encode(), _cpu_identity().encode()])).hexdigest()[:16]
  folder = _cache_dir()
  path = os.path.join(folder, f"cpu_kernels_{key}.so")
  if os.path.exists(path):
    return path
  os.makedirs(folder, exist_ok=True)
  # Build beside the target and rename: concurrent processes never load a half-written file.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
  os.close(fd)
  try:
    cmd = [compiler, *FLAGS, f"-I{jax.ffi.include_dir()}", SOURCE, "-o", tmp]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


_disabled = False


@contextlib.contextmanager
def disabled():
  """Within this context (at trace time) callers use their XLA forms: to compare the two, or
  for XLA's cost analysis, which cannot see inside a native kernel."""
  global _disabled
  previous, _disabled = _disabled, True
  try:
    yield
  finally:
    _disabled = previous


def available() -> bool:
  """True when the kernels can be used (built, loaded and registered once, on first call)."""
  return not _disabled and _load()


@functools.lru_cache(maxsize=None)
def _load() -> bool:
  if os.environ.get("JAX_ASC_CPU_KERNELS", "1") == "0":
    return False
  compiler = shutil.which(os.environ.get("CXX", "c++"))
  if compiler is None:
    warnings.warn("jax_asc: no C++ compiler found ($CXX or c++): the native CPU kernels are off "
                  "and XLA's forms are used (the same results, several times slower to train)")
    return False
  try:
    library = ctypes.cdll.LoadLibrary(_build(compiler))
    for target, symbol in TARGETS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                  platform="cpu")
  except (OSError, RuntimeError, AttributeError) as error:
    warnings.warn(f"jax_asc: the native CPU kernels could not be built or loaded ({error}); "
                  "using XLA's forms on CPU")
    return False
  return True


def library_path() -> Optional[str]:
  """The compiled library's path when the kernels are available (for reports and tests)."""
  if not available():
    return None
  return _build(shutil.which(os.environ.get("CXX", "c++")))
