#!/usr/bin/env bash
# Report 000 (DAFA): two-PaSST-teacher ensemble → CP-Mobile student → device-specific fine-tuning.
# Runs every stage of the report's chain (jax_asc/recipes.py: plan_report000), resumably, and writes
# the report's tables to <workdir>/tables/report000.md.
#   launch/report000_dafa.sh [--workdir DIR] [--dirs MicIRP/] [--passt-checkpoint passt-s-…-swa.pt] DATASET_ROOT
#   launch/report000_dafa.sh --smoke      # the same chain on synthetic data with tiny models
set -euo pipefail
cd "$(dirname "$0")/.."
# Transparent huge pages for the heap (jax_asc/native/allocator.py), unless already set.
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}"
PY="${PYTHON:-python3}"
[[ -n "${PYTHON:-}" || ! -x .venv/bin/python ]] || PY=.venv/bin/python
exec "$PY" -m jax_asc.recipes report000 "$@"
