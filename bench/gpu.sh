#!/usr/bin/env bash
# The GPU benchmark, one run of at most 8 minutes on one GPU (an H100/H200 whose system Python
# has torch, torchvision and numpy; no network, no install: the repository's working tree is all
# it needs). Prints the figures and writes OUT_DIR/gpu.json (+ nvidia-smi.txt, gpu.log).
#
#   bash bench/gpu.sh [OUT_DIR]          # OUT_DIR defaults to $OUT, else ./bench-out
#   bash bench/gpu.sh OUT_DIR --sections pretrain:ViT-L/16,decode   # extra args go to bench.gpu
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-bench-out}}"
shift || true
mkdir -p "$out"
python="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || echo "nvidia-smi not available" > "$out/nvidia-smi.txt"
# bench.gpu keeps itself to 450 s (each section in its own process under a time box); the outer
# timeout is a last guard at 8 minutes.
timeout --signal=TERM --kill-after=10 470 "$python" -m bench.gpu --json "$out/gpu.json" "$@" 2>&1 | tee "$out/gpu.log"
rc=${PIPESTATUS[0]}
echo "bench/gpu.sh: exit $rc; report in $out/gpu.json"
exit "$rc"
