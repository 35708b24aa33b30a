"""`python -m jax_asc.native [--march M ...]`: builds the native CPU kernels now (`make install`
runs it), so no run or timed step pays the first build; prints what a run would use."""
from __future__ import annotations

import argparse
import sys

from jax_asc import native


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--march", action="append", default=None,
                      help="-march target(s) to build (default: $JAX_ASC_KERNEL_MARCH or native)")
  args = parser.parse_args(argv)
  if native.requested_mode() == "xla":
    print("jax_asc: $JAX_ASC_KERNELS / $JAX_ASC_CPU_KERNELS ask for XLA's forms: nothing built")
    return 0
  if native.compiler() is None:
    print("jax_asc: no C++ compiler ($CXX or c++): runs will use XLA's forms on CPU (slower); "
          "install g++ or clang++ for the native kernels")
    return 0 if native.requested_mode() == "auto" else 1
  for march in args.march or [native.default_march()]:
    try:
      path = native.build(march)
    except native.BuildError as error:
      print(f"jax_asc: {error}", file=sys.stderr)
      return 1
    print(f"jax_asc: -march={march}: {native.library_target(path)} ({path})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
