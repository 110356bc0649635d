#!/usr/bin/env bash
# The GPU benchmarks in one run (about 8 minutes on one modern GPU, plus the longest-context
# search's budget), printing everything:
#   1. engine vs plain Trainer + peft (bench/throughput.py --quick)
#   2. packing vs padded vs length-grouped (bench/packing.py --quick)
#   3. compute efficiency vs the GPU's own fp32 matmul (bench/compute.py --quick)
#   4. the memory estimate vs torch.cuda.max_memory_reserved/allocated of real engine steps
#      (bench/estimate_accuracy.py --cuda)
#   5. the memory savers on a real GPU (bench/memory_cuda.py): real peaks against precise mode
#   6. the longest sequence that trains on each card size this GPU can emulate, standard path vs
#      ours, beside Unsloth's published figures (bench/memory_cuda.py --longest; its time budget is
#      LONGEST_BUDGET_S, default 300 s; 0 leaves it out)
# Without a CUDA GPU it says so and exits 0. Run from anywhere: bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "bench/gpu_check.sh: no CUDA GPU visible to torch on this machine — nothing to measure, exiting."
    exit 0
fi
"$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv

failed=()
run() {
    echo
    echo "=================================================================================="
    echo "== $*"
    local start=$SECONDS
    if ! timeout "${LIMIT:-300}" "$PY" "$@"; then
        failed+=("$1")
    fi
    echo "== $1: $((SECONDS - start)) s"
}
run bench/throughput.py --quick
run bench/packing.py --quick
run bench/compute.py --quick
run bench/estimate_accuracy.py --cuda
run bench/memory_cuda.py
budget="${LONGEST_BUDGET_S:-300}"
if [ "$budget" != 0 ]; then
    # the search stops itself within its budget; the limit leaves room for it to print and write
    LIMIT=$((budget + 120)) run bench/memory_cuda.py --longest --budget-s "$budget"
fi
echo
if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu_check: failed or timed out: ${failed[*]}"
    exit 1
fi
echo "gpu_check: all ran in ${SECONDS} s"
