#!/usr/bin/env bash
# The CPU benchmarks again on a CUDA GPU: teacher in fp16 (autocast), extraction with the
# background writer overlapping the GPU forward, and the loader feeding pinned batches to the GPU.
#
#   bash benchmarks/gpu.sh [--quick]          (from the repository root, on a machine with a GPU)
#
# Each benchmark writes its "(CUDA ...)" section of docs/benchmarks.md and prints a JSON line;
# the lines are collected in docs/benchmarks-gpu.json. Fails at once, before any work, when torch
# sees no CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}
QUICK=()
[ "${1:-}" = "--quick" ] && QUICK=(--quick)

if ! "$PY" - <<'PYEOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"benchmarks/gpu.sh: no CUDA device visible to torch {torch.__version__} "
             f"(built with CUDA {torch.version.cuda}); run it on a machine with a GPU and a CUDA build of torch")
print(f"GPU: {torch.cuda.get_device_name()} ({torch.cuda.device_count()} visible), torch {torch.__version__}, CUDA {torch.version.cuda}")
PYEOF
then
    exit 1
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

out=docs/benchmarks-gpu.json
echo "[" > "$out.tmp"
sep=""
for bench in "teacher_forward --device cuda --precision fp16" \
             "extract --device cuda --precision fp16" \
             "loader --device cuda"; do
    set -- $bench
    name=$1; shift
    echo "== $name $*"
    line=$("$PY" "benchmarks/$name.py" "${QUICK[@]}" "$@" | tee /dev/stderr | grep '^{"' | tail -n 1)
    printf '%s%s\n' "$sep" "$line" >> "$out.tmp"
    sep=","
done
echo "]" >> "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out and the CUDA sections of docs/benchmarks.md"
