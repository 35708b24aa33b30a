#!/usr/bin/env bash
# Report 002: runs the plan declared in configs/report002_teachers.py (get_plan) with the one plan runner
# (jax_asc/plans.py): stale stages only, resumably; tables in <workdir>/tables/report002.md.
#   launch/report002_teachers.sh [--workdir DIR] [--dirs MicIRP/] [--passt-checkpoint passt-s-…-swa.pt] [--jobs N] DATASET_ROOT
#   launch/report002_teachers.sh --smoke      # the same chain on synthetic data with tiny models
set -euo pipefail
cd "$(dirname "$0")/.."
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}"   # huge pages (native/allocator.py)
PY="${PYTHON:-python3}"; [[ -n "${PYTHON:-}" || ! -x .venv/bin/python ]] || PY=.venv/bin/python
exec "$PY" -m jax_asc.plans configs/report002_teachers.py "$@"
