"""The native CPU kernels' build and the explicit choice of form (jax_asc/native): the source
compiles for AVX2 (x86-64-v3) and AVX-512 (x86-64-v4), and for aarch64 with a cross compiler;
where a compiler exists the host build is used; `auto`, `native` and `xla` behave as documented;
on an AVX-512 host the AVX2 build passes the parity tests too."""
import os
import platform
import shutil
import subprocess
import sys
from concurrent import futures

import pytest

from jax_asc import native

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
X86 = platform.machine() in ("x86_64", "AMD64")
needs_compiler = pytest.mark.skipif(native.compiler() is None,
                                    reason="no C++ compiler ($CXX or c++) on this machine")


def _elf_machine(path: str) -> int:
  with open(path, "rb") as f:
    header = f.read(20)
  assert header[:4] == b"\x7fELF", path
  return int.from_bytes(header[18:20], "little")


@needs_compiler
@pytest.mark.skipif(not X86, reason="x86-64 targets: this host is not x86-64")
def test_the_kernels_compile_for_avx2_and_avx512():
  """Both x86 builds compile, whatever this CPU has (a missing intrinsic header or a vector
  type wider than the target's registers would fail here, not on a user's machine)."""
  with futures.ThreadPoolExecutor(2) as pool:   # two compiler processes, one per core
    paths = dict(zip(("x86-64-v3", "x86-64-v4"),
                     pool.map(lambda m: native.build(m, announce=False),
                              ("x86-64-v3", "x86-64-v4"))))
  for path in paths.values():
    assert _elf_machine(path) == 62   # EM_X86_64
  if "avx2" in native.cpu_extensions().split():   # the AVX2 build runs here: ask it its width
    assert native.library_target(paths["x86-64-v3"]) == "avx2: 8 floats, 16 registers"
  if "avx512f" in native.cpu_extensions().split():
    assert native.library_target(paths["x86-64-v4"]) == "avx512: 16 floats, 32 registers"


CROSS = shutil.which("aarch64-linux-gnu-g++")


@pytest.mark.skipif(CROSS is None, reason="no aarch64 cross compiler (Debian: apt-get install "
                    "g++-aarch64-linux-gnu); on aarch64 hosts the native build is the NEON one")
def test_the_kernels_compile_for_aarch64_neon():
  path = native.build("armv8-a", CROSS, announce=False)
  assert _elf_machine(path) == 183   # EM_AARCH64


@needs_compiler
def test_a_host_with_a_compiler_uses_the_native_kernels():
  """A failed build fails the suite here rather than letting every parity test compare XLA's
  forms with themselves."""
  if native.requested_mode() == "xla":
    pytest.skip("JAX_ASC_KERNELS=xla asks for XLA's forms")
  status = native.status()
  assert status.active, status.reason
  described = native.describe()
  assert described["kernels"] == "native" and len(described["library_hash"]) == 16
  assert described["target"].split(":")[0] in ("avx512", "avx2", "neon", "sse")
  assert "CPU kernels: native" in native.summary()


def _resolve_in_subprocess(env_updates, code="from jax_asc import native; "
                           "print(native.describe()['kernels'])"):
  env = dict(os.environ, **env_updates)
  return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        cwd=REPO, timeout=300)


def test_auto_falls_back_with_one_line_naming_the_cause(tmp_path):
  result = _resolve_in_subprocess({"CXX": str(tmp_path / "no-such-compiler"),
                                   "JAX_ASC_KERNEL_DIR": str(tmp_path), "JAX_ASC_KERNELS": ""})
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "xla"
  lines = [l for l in result.stderr.splitlines() if l.startswith("jax_asc:")]
  assert len(lines) == 1 and "no C++ compiler" in lines[0], result.stderr


def test_native_that_cannot_be_used_is_an_error_naming_the_cause(tmp_path):
  result = _resolve_in_subprocess({"CXX": str(tmp_path / "no-such-compiler"),
                                   "JAX_ASC_KERNEL_DIR": str(tmp_path),
                                   "JAX_ASC_KERNELS": "native"})
  assert result.returncode != 0
  assert "BuildError" in result.stderr and "no C++ compiler" in result.stderr


def test_a_build_that_fails_names_the_compiler_error(tmp_path):
  broken = tmp_path / "c++"
  broken.write_text("#!/bin/sh\necho 'cpu_kernels.cc:1:1: error: something broke' >&2\nexit 1\n")
  broken.chmod(0o755)
  result = _resolve_in_subprocess({"CXX": str(broken), "JAX_ASC_KERNEL_DIR": str(tmp_path),
                                   "JAX_ASC_KERNELS": "native"})
  assert result.returncode != 0 and "error: something broke" in result.stderr


def test_xla_is_chosen_without_building_and_bad_values_are_rejected(tmp_path):
  result = _resolve_in_subprocess({"JAX_ASC_KERNELS": "xla", "JAX_ASC_KERNEL_DIR": str(tmp_path)})
  assert result.stdout.strip() == "xla" and not os.listdir(tmp_path)
  result = _resolve_in_subprocess({"JAX_ASC_CPU_KERNELS": "0", "JAX_ASC_KERNELS": "",
                                   "JAX_ASC_KERNEL_DIR": str(tmp_path)})
  assert result.stdout.strip() == "xla" and not os.listdir(tmp_path)
  result = _resolve_in_subprocess({"JAX_ASC_KERNELS": "fast"})
  assert result.returncode != 0 and "JAX_ASC_KERNELS" in result.stderr
  with pytest.raises(ValueError, match="config.kernels"):
    native.configure("fastest")


def test_configure_xla_switches_the_forms_in_process():
  import jax
  import jax.numpy as jnp
  from jax_asc.models import fast_ops
  x = jnp.ones((40, 16))
  try:
    native.configure("xla")
    assert not native.available() and native.describe()["kernels"] == "xla"
    assert "jax_asc_" not in jax.jit(fast_ops.moments).lower(x).as_text()
  finally:
    native.configure("auto")


@pytest.mark.skipif("avx512f" not in native.cpu_extensions().split(),
                    reason="the AVX2 build is the host build here (no AVX-512)")
def test_the_avx2_build_passes_the_parity_tests_on_an_avx512_host():
  env = dict(os.environ, JAX_ASC_KERNEL_MARCH="x86-64-v3", JAX_ASC_KERNELS="native")
  result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           os.path.join(REPO, "tests", "test_fast_layers.py")],
                          env=env, capture_output=True, text=True, cwd=REPO, timeout=1500)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_a_gpu_or_tpu_host_never_compiles_the_kernels(tmp_path, monkeypatch):
  monkeypatch.setenv("JAX_ASC_KERNEL_DIR", str(tmp_path))
  monkeypatch.setattr(native.jax, "default_backend", lambda: "gpu")
  try:
    native.configure("auto")
    status = native.status()
    assert not status.active and "default backend is gpu" in status.reason
    assert not os.listdir(tmp_path)   # nothing compiled
    with pytest.raises(native.BuildError, match="default backend is gpu"):
      native.configure("native")
  finally:
    monkeypatch.undo()
    native.configure("auto")
