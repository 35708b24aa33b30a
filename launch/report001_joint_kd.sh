#!/usr/bin/env bash
# Report 001: joint output + feature distillation from 2 PaSST + 2 CP-ResNet teachers.
# Runs every stage of the report's chain (jax_asc/recipes.py: plan_report001), resumably, and writes
# the report's tables to <workdir>/tables/report001.md.
#   launch/report001_joint_kd.sh [--workdir DIR] [--dirs MicIRP/] [--passt-checkpoint passt-s-…-swa.pt] DATASET_ROOT
#   launch/report001_joint_kd.sh --smoke      # the same chain on synthetic data with tiny models
set -euo pipefail
cd "$(dirname "$0")/.."
# Transparent huge pages for the heap (jax_asc/native/allocator.py), unless already set.
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}"
PY="${PYTHON:-python3}"
[[ -n "${PYTHON:-}" || ! -x .venv/bin/python ]] || PY=.venv/bin/python
exec "$PY" -m jax_asc.recipes report001 "$@"
