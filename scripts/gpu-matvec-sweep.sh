#!/usr/bin/env bash
# Sweeps the launch shapes of hearth's vectorised matvec kernels on a CUDA machine: one run of
# the matvec_bw example (llama-3.1-8b's layer and head shapes, Q8_0/Q4_0/bf16/f32, each next to
# the read bandwidth measured in the same process) per HEARTH_MATVEC shape.
#
#   scripts/gpu-matvec-sweep.sh BUNDLE [ITERS] [SHAPE ...]
#
# BUNDLE is scripts/build-cuda.sh's gpu-bin/. Without SHAPEs, a default list. Output lines go to
# stdout and, when $OUT is set, to $OUT/matvec_sweep.txt.
set -uo pipefail
G="$(cd "$1" && pwd)"
iters="${2:-50}"
shift 2 2>/dev/null || shift $#
shapes=("$@")
if [ ${#shapes[@]} -eq 0 ]; then
  shapes=(
    "rows=1,unroll=4,convert=0"
    "rows=1,unroll=4,convert=1"
    "rows=2,unroll=4,convert=1"
    "rows=4,unroll=4,convert=1"
    "rows=4,unroll=2,convert=1"
    "rows=8,unroll=2,convert=1"
    "rows=2,unroll=8,convert=1"
    "rows=4,unroll=4,units=32,convert=1"
    "rows=2,unroll=4,units=128,convert=1"
    "rows=4,unroll=4,units=256,convert=1"
  )
fi
W=/tmp/gpu-matvec
mkdir -p "$W"
cd "$W" || exit 1
gzip -dc "$G/matvec_bw.gz" >matvec_bw && chmod +x matvec_bw
printf '[compilation]\ncache = { file = "%s/cc" }\n' "$W" >cubecl.toml
log="${OUT:-$W}/matvec_sweep.txt"
echo "== $(date -u '+%F %T UTC') $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)" | tee "$log"
for s in "${shapes[@]}"; do
  echo "== HEARTH_MATVEC=$s" | tee -a "$log"
  HEARTH_MATVEC="$s" timeout 120 ./matvec_bw cuda "$iters" "${FILTER:-}" 2>&1 | grep -v '^matvec shape' | tee -a "$log"
done
