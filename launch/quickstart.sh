#!/usr/bin/env bash
# Trains and evaluates CP-Mobile on the synthetic default, as `make demo` does.
#   launch/quickstart.sh [WORKDIR] [extra --config.key=value flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
# Transparent huge pages for the heap (jax_asc/native/allocator.py), unless already set.
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}"
workdir="${1:-workdirs/quickstart}"
shift || true
python -m jax_asc.main --config configs/quickstart.py --workdir "$workdir" "$@"
