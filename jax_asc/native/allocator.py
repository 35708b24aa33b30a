"""Keep freed host memory in the process (glibc malloc), so XLA's CPU buffers are reused.

XLA's CPU runtime allocates each step's large temporary buffers anew. With glibc's defaults, big
blocks come from fresh `mmap`s (or are trimmed back to the system when freed), so every step
touches hundreds of megabytes of new pages: about 100,000 page faults, a third of a CP-Mobile
training step at batch 64 on two cores (measured with `getrusage`). Keeping freed memory (no
mmap, no trimming, one arena so every thread reuses it) removes them; the process's resident
memory stays at its peak instead of shrinking between steps.

Call `retain_freed_memory()` first thing in a process (before JAX starts its threads):
`jax_asc.main` and the benchmarks do. `JAX_ASC_MALLOC_TUNING=0` turns it off. Not glibc (macOS,
musl): nothing happens.

Transparent huge pages: with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` in the environment at
process start (glibc ≥ 2.35; read before Python runs, so it cannot be set from here), malloc
asks the kernel for 2 MB pages for the heap (`madvise`), so passes over the large activations
take far fewer TLB misses: about 6 ms of a 165 ms CP-Mobile step on the 2-core development
machine (medians of 13 alternating pairs of processes). `make bench`, `make demo` and the `launch/` scripts set it;
`huge_page_bytes()` reports what the kernel granted.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameters (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

_applied = None


def retain_freed_memory() -> bool:
  """Configures glibc malloc as above; True when it did (once per process)."""
  global _applied
  if _applied is not None:
    return _applied
  _applied = False
  if os.environ.get("JAX_ASC_MALLOC_TUNING", "1") == "0":
    return False
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
  except (OSError, AttributeError, TypeError):
    return False
  mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  _applied = bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1) and mallopt(M_MMAP_MAX, 0)
                  and mallopt(M_ARENA_MAX, 1))
  return _applied


def huge_page_bytes():
  """Bytes of this process's anonymous memory in transparent huge pages (Linux), else None."""
  try:
    with open("/proc/self/smaps_rollup") as f:
      for line in f:
        if line.startswith("AnonHugePages:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  return None
