#!/usr/bin/env bash
# Report 004 (S5): runs the plan declared in configs/report004_s5.py (get_plan) with the one plan
# runner (jax_asc/plans.py): the Qwen2-Audio teacher's cache, the six M2D taggers (1c / 4c; DCASE
# baseline, masked SD, Qwen semantic KD), then the system evaluation with the released ResUNetK;
# stale stages only, resumably; tables 1 and 2 in <workdir>/tables/report004.md.
#   launch/report004_s5.sh [--workdir DIR] [--jobs N] --m2d M2D_CHECKPOINT --resunetk RESUNETK_CHECKPOINT --qwen QWEN2_AUDIO_FOLDER DATA
#     DATA: the DCASE 2026 Task 4 `data` folder (dev_set/, eval_set/)
#   launch/report004_s5.sh --smoke   # the synthetic S5 set, tiny random M2D and Qwen teacher, a separator trained here
set -euo pipefail
cd "$(dirname "$0")/.."
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}"   # huge pages (native/allocator.py)
PY="${PYTHON:-python3}"; [[ -n "${PYTHON:-}" || ! -x .venv/bin/python ]] || PY=.venv/bin/python
exec "$PY" -m jax_asc.plans configs/report004_s5.py "$@"
