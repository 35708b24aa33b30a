#!/usr/bin/env bash
# Report 003 (ContrastASC): runs the plan declared in configs/report003_contrastasc.py (get_plan)
# with the one plan runner (jax_asc/plans.py): the BEATs teachers (linear probe, CE-only FT,
# contrastive FT with cosine and linear heads; phase 1 then phase 2), the CP-Mobile students
# (no KD, KD, CRD from either teacher, the norm ablations, the five sizes of figure 2), each
# evaluated few-shot; stale stages only, resumably; tables 1-3 and figure 2 in
# <workdir>/tables/report003.{md,json,png}.
#   launch/report003_contrastasc.sh [--workdir DIR] [--jobs N] [--dirs MICIRP] --beats BEATS_CHECKPOINT --tut17 TUT17_ROOT --icme24 ICME24_ROOT --esc50 ESC50_ROOT TAU22_ROOT
#   launch/report003_contrastasc.sh --smoke   # synthetic scenes at 16 kHz, a tiny random BEATs
set -euo pipefail
cd "$(dirname "$0")/.."
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}"   # huge pages (native/allocator.py)
PY="${PYTHON:-python3}"; [[ -n "${PYTHON:-}" || ! -x .venv/bin/python ]] || PY=.venv/bin/python
exec "$PY" -m jax_asc.plans configs/report003_contrastasc.py "$@"
