#!/usr/bin/env bash
# Trains and evaluates CP-Mobile on the synthetic default, as `make demo` does.
#   launch/quickstart.sh [WORKDIR] [extra --config.key=value flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
workdir="${1:-workdirs/quickstart}"
shift || true
python -m jax_asc.main --config configs/quickstart.py --workdir "$workdir" "$@"
