#!/usr/bin/env bash
# Report 002: what makes a good teacher — architectures, sizes, device generalisation.
# Runs every stage of the report's chain (jax_asc/recipes.py: plan_report002), resumably, and writes
# the report's tables to <workdir>/tables/report002.md.
#   launch/report002_teachers.sh [--workdir DIR] [--dirs MicIRP/] [--passt-checkpoint passt-s-…-swa.pt] DATASET_ROOT
#   launch/report002_teachers.sh --smoke      # the same chain on synthetic data with tiny models
set -euo pipefail
cd "$(dirname "$0")/.."
# Transparent huge pages for the heap (jax_asc/native/allocator.py), unless already set.
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}"
PY="${PYTHON:-python3}"
[[ -n "${PYTHON:-}" || ! -x .venv/bin/python ]] || PY=.venv/bin/python
exec "$PY" -m jax_asc.recipes report002 "$@"
