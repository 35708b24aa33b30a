"""Native CPU kernels (XLA FFI) for the operations XLA's CPU backend runs slowly.

`cpu_kernels.cc` holds the depthwise convolution (forward pass and both gradients; forward and
kernel gradient also with a batch norm's apply + ReLU fused on their input), the 1×1 weight
gradient, the 1×1 convolution with the same fusion, the 1×1 convolution with its output's
batch statistics and its whole backward pass in one, the stem convolutions, the batch-norm
statistics and gradient sums, and the short-time Fourier transform (with the pre-emphasis and
centre padding) and the mel projection. Its vector width follows the target it is compiled for
(16 floats with AVX-512, 8 with AVX2/FMA, 4 with NEON or SSE).

Which form runs on CPU, the kernels or XLA's own operations, is chosen explicitly:

* `config.kernels` (or, when that is "auto", `$JAX_ASC_KERNELS`): `auto` uses the kernels when
  they build and load, else falls back to XLA's forms with one line on stderr naming the cause;
  `native` requires them (an error naming the cause otherwise); `xla` never builds them. The
  older `JAX_ASC_CPU_KERNELS=0` means `xla`.
* The build is compiled with the system C++ compiler (`$CXX`, else `c++`) against the XLA FFI
  headers shipped with jaxlib, for `-march=$JAX_ASC_KERNEL_MARCH` (default `native`, this CPU;
  e.g. `x86-64-v3` for the AVX2 build on an AVX-512 machine), and cached under
  `$JAX_ASC_KERNEL_DIR` (default `~/.cache/jax_asc/kernels`), keyed by the source, the jaxlib
  version, the compiler, the flags and the CPU. The first build announces itself and its
  duration; `make install` does it (`python -m jax_asc.native`).
* A host whose default JAX backend is not the CPU (GPU, TPU) never compiles the C++: the
  callers use `lax.platform_dependent`, so GPU and TPU computations use XLA's forms anyway.

`describe()` is what a run records (printed at start, stored in every `.done.json`, printed by
`make bench`): the choice, the reason, the CPU's vector extensions, the build's target and the
library's hash.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, Optional

import jax
import jaxlib

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_kernels.cc")
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-w")
MODES = ("auto", "native", "xla")
# FFI target name → exported handler symbol.
TARGETS = {"jax_asc_depthwise_forward": "JaxAscDepthwiseForward",
           "jax_asc_depthwise_input_grad": "JaxAscDepthwiseInputGrad",
           "jax_asc_depthwise_kernel_grad": "JaxAscDepthwiseKernelGrad",
           "jax_asc_affine_relu_depthwise_backward": "JaxAscAffineReluDepthwiseBackward",
           "jax_asc_affine_relu_depthwise_moments_forward":
               "JaxAscAffineReluDepthwiseMomentsForward",
           "jax_asc_affine_relu_depthwise_moments_backward":
               "JaxAscAffineReluDepthwiseMomentsBackward",
           "jax_asc_affine_relu_depthwise_forward": "JaxAscAffineReluDepthwiseForward",
           "jax_asc_moments": "JaxAscMoments",
           "jax_asc_norm_grad_sums": "JaxAscNormGradSums",
           "jax_asc_mel_spectrogram": "JaxAscMelSpectrogram",
           "jax_asc_matmul_tn": "JaxAscMatmulTN",
           "jax_asc_affine_relu_matmul": "JaxAscAffineReluMatmul",
           "jax_asc_affine_relu_matmul_moments": "JaxAscAffineReluMatmulMoments",
           "jax_asc_affine_relu_matmul_moments_backward": "JaxAscAffineReluMatmulMomentsBackward",
           "jax_asc_matmul_moments": "JaxAscMatmulMoments",
           "jax_asc_matmul_moments_backward": "JaxAscMatmulMomentsBackward",
           "jax_asc_affine_relu_matmul_tn": "JaxAscAffineReluMatmulTN",
           "jax_asc_affine_relu_matmul_input_grad": "JaxAscAffineReluMatmulInputGrad",
           "jax_asc_conv_forward": "JaxAscConvForward",
           "jax_asc_conv_kernel_grad": "JaxAscConvKernelGrad",
           "jax_asc_conv_input_grad": "JaxAscConvInputGrad"}
# CPU flags worth naming (x86 /proc/cpuinfo "flags", ARM "Features").
_VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                 "avx512_vnni", "avx512_bf16", "amx_tile", "asimd", "asimdhp", "sve", "sve2")


class BuildError(RuntimeError):
  """The kernels could not be compiled or loaded; the message names the command and the cause."""


def _cache_dir() -> str:
  default = os.path.join(os.path.expanduser("~"), ".cache", "jax_asc", "kernels")
  return os.environ.get("JAX_ASC_KERNEL_DIR", default)


def _cpu_info() -> Dict[str, str]:
  info = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "flags", "Features", "CPU part") and key not in info:
          info[key] = value.strip()
  except OSError:
    pass
  return info


def cpu_extensions() -> str:
  """This CPU's vector extensions, e.g. "avx avx2 fma f16c" ("" where /proc/cpuinfo is absent)."""
  info = _cpu_info()
  flags = set((info.get("flags", "") + " " + info.get("Features", "")).split())
  return " ".join(f for f in _VECTOR_FLAGS if f in flags)


def _cpu_identity() -> str:
  """What `-march=native` depends on: the CPU model and its feature flags."""
  info = _cpu_info()
  return platform.machine() + "\n" + "\n".join(f"{k}: {v}" for k, v in sorted(info.items()))


def compiler() -> Optional[str]:
  """The C++ compiler's path ($CXX, else c++), or None."""
  return shutil.which(os.environ.get("CXX", "c++"))


def default_march() -> str:
  return os.environ.get("JAX_ASC_KERNEL_MARCH", "native")


def library_key(march: str, cxx: str) -> str:
  with open(SOURCE, "rb") as f:
    source = f.read()
  flags = " ".join([*FLAGS, f"-march={march}"])
  parts = [source, jaxlib.__version__.encode(), flags.encode(), cxx.encode()]
  if march == "native":
    parts.append(_cpu_identity().encode())
  return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def build(march: Optional[str] = None, cxx: Optional[str] = None, *,
          announce: bool = True) -> str:
  """Compiles the kernels for `-march=march` (once per cache key) and returns the shared
  library's path. Raises BuildError with the compiler's messages when it fails. The first build
  prints a progress line and its duration on stderr (about a minute on 2 cores)."""
  march = march or default_march()
  cxx = cxx or compiler()
  if cxx is None:
    raise BuildError("no C++ compiler found ($CXX or c++)")
  folder = _cache_dir()
  path = os.path.join(folder, f"cpu_kernels_{march}_{library_key(march, cxx)}.so")
  if os.path.exists(path):
    return path
  os.makedirs(folder, exist_ok=True)
  # Build beside the target and rename: concurrent processes never load a half-written file.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
  os.close(fd)
  cmd = [cxx, *FLAGS, f"-march={march}", f"-I{jax.ffi.include_dir()}", SOURCE, "-o", tmp]
  start = time.perf_counter()
  if announce:
    print(f"jax_asc: compiling the native CPU kernels (-march={march}) into {folder} ...",
          file=sys.stderr, flush=True)
  try:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
      errors = [l for l in result.stderr.splitlines() if "error" in l] or \
          result.stderr.splitlines()[-5:]
      raise BuildError(f"{' '.join(cmd)} failed: " + " | ".join(errors[:3]))
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  if announce:
    print(f"jax_asc: native CPU kernels built in {time.perf_counter() - start:.0f} s",
          file=sys.stderr, flush=True)
  return path


def library_target(path: str) -> str:
  """The vector target a built library was compiled for, e.g. "avx2: 8 floats, 16 registers"."""
  library = ctypes.cdll.LoadLibrary(path)
  library.JaxAscKernelTarget.restype = ctypes.c_char_p
  return library.JaxAscKernelTarget().decode()


def file_hash(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the choice
@dataclasses.dataclass(frozen=True)
class Status:
  """What a process uses on CPU. `active`: the native kernels are registered and used."""
  requested: str            # auto | native | xla
  active: bool
  reason: str               # why this choice (the cause of a fallback)
  march: str = ""
  target: str = ""          # the build's vector target (see library_target)
  library: str = ""         # path of the shared library
  library_hash: str = ""

  @property
  def kernels(self) -> str:
    return "native" if self.active else "xla"


_requested: Optional[str] = None   # set by configure(); else from the environment
_disabled = False


def _mode_from_environment() -> str:
  mode = os.environ.get("JAX_ASC_KERNELS", "").strip().lower()
  if mode:
    if mode not in MODES:
      raise ValueError(f"$JAX_ASC_KERNELS={mode!r}: expected one of {MODES}")
    return mode
  return "xla" if os.environ.get("JAX_ASC_CPU_KERNELS", "1") == "0" else "auto"


def requested_mode() -> str:
  return _requested or _mode_from_environment()


def configure(mode: str = "auto") -> Status:
  """Sets this process's choice (`config.kernels`; "auto" defers to $JAX_ASC_KERNELS) and
  resolves it now: builds and loads the kernels if asked, raises BuildError if "native" cannot
  be used. Call before anything is traced (a traced function keeps the form it was traced with)."""
  global _requested
  if mode not in MODES:
    raise ValueError(f"config.kernels={mode!r}: expected one of {MODES}")
  _requested = None if mode == "auto" else mode
  return status()


def status() -> Status:
  """The resolved choice (building and loading the kernels on first call when they are wanted).
  Raises BuildError when "native" was requested and the kernels cannot be used."""
  result = _resolve(requested_mode(), default_march(), os.environ.get("CXX", "c++"),
                    _cache_dir())
  if result.requested == "native" and not result.active:
    raise BuildError(f"config.kernels / $JAX_ASC_KERNELS = native, but {result.reason}")
  return result


_registered: Dict[str, str] = {}   # march → library path registered in this process


@functools.lru_cache(maxsize=None)
def _resolve(mode: str, march: str, cxx: str, folder: str) -> Status:
  """The choice for this mode and build settings (cached: resolved once per process)."""
  del cxx, folder   # read again by build(); part of the cache key only
  if mode == "xla":
    return Status(mode, False, "XLA's forms requested (config.kernels / $JAX_ASC_KERNELS = xla)")
  backend = jax.default_backend()
  if backend != "cpu":
    return Status(mode, False, f"the default backend is {backend}: XLA's forms (the C++ kernels "
                  "are for CPU hosts and are not compiled here)")
  try:
    path = build(march)
    if _registered and march not in _registered:
      raise BuildError(f"this process already registered the kernels for -march="
                       f"{next(iter(_registered))}; one build per process")
    if march not in _registered:
      library = ctypes.cdll.LoadLibrary(path)
      for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                    platform="cpu")
      _registered[march] = path
    target = library_target(path)
  except (OSError, BuildError, AttributeError) as error:
    reason = f"the native CPU kernels could not be built or loaded: {error}"
    if mode == "auto":
      print(f"jax_asc: {reason}; using XLA's forms on CPU (slower)", file=sys.stderr, flush=True)
    return Status(mode, False, reason, march)
  return Status(mode, True, f"built for -march={march} and loaded", march, target, path,
                file_hash(path))


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
  """True when the kernels are used (built, loaded and registered once, on first call)."""
  return not _disabled and status().active


def library_path() -> Optional[str]:
  """The compiled library's path when the kernels are available (for reports and tests)."""
  return status().library or None


def describe() -> Dict[str, str]:
  """What a run records about its CPU kernels (JSON-ready)."""
  s = status()
  return {"kernels": s.kernels, "requested": s.requested, "reason": s.reason,
          "march": s.march, "target": s.target, "library_hash": s.library_hash,
          "cpu": _cpu_info().get("model name", platform.machine()),
          "cpu_extensions": cpu_extensions()}


def summary() -> str:
  """One line for the start of a run or a benchmark."""
  d = describe()
  line = f"CPU kernels: {d['kernels']} (requested {d['requested']}"
  if d["kernels"] == "native":
    line += f"; {d['target']}, -march={d['march']}, library {d['library_hash']}"
  else:
    line += f"; {d['reason']}"
  return line + f") | CPU {d['cpu']}: {d['cpu_extensions'] or 'no vector extensions listed'}"
