#!/usr/bin/env bash
# benchmarks/gpu_check.py as a lent GPU machine runs it: that machine's own python3 (no .venv),
# the tree's root as the working folder, the JSON and the test log into $OUT, the whole run
# held under 8 minutes. Carry gpu_bundle/ (make gpu-bundle) with the tree.
set -o pipefail
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1
exec timeout 470 python3 benchmarks/gpu_check.py --out "${OUT:-benchmarks/results}" "$@"
