#!/usr/bin/env bash
# Report 000: runs the plan declared in configs/report000_dafa.py (get_plan) with the one plan runner
# (jax_asc/plans.py): stale stages only, resumably; tables in <workdir>/tables/report000.md.
#   launch/report000_dafa.sh [--workdir DIR] [--dirs MicIRP/] [--passt-checkpoint passt-s-…-swa.pt] [--jobs N] DATASET_ROOT
#   launch/report000_dafa.sh --smoke      # the same chain on synthetic data with tiny models
set -euo pipefail
cd "$(dirname "$0")/.."
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}"   # huge pages (native/allocator.py)
PY="${PYTHON:-python3}"; [[ -n "${PYTHON:-}" || ! -x .venv/bin/python ]] || PY=.venv/bin/python
exec "$PY" -m jax_asc.plans configs/report000_dafa.py "$@"
