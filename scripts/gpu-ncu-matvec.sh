#!/usr/bin/env bash
# Profiles hearth's packed matvec kernels with Nsight Compute on a CUDA machine: the Q8_0 (or
# FORMAT) down and gate/up shapes with bf16 activations, one launch each, the full section set
# and the SASS with per-instruction counts, plus the kernels' timing next to the stream probe.
#
#   scripts/gpu-ncu-matvec.sh BUNDLE [LABEL ...]
#
# A LABEL is FILTER@SKIP: a matvec_bw filter (a shape's name: every format's kernels of it, 4
# launches per kind, Q8_0 f32 x, then bf16 x, then the fused variant) and the matvec launches to skip.
# BUNDLE is scripts/build-cuda.sh's gpu-bin/. Results go to $OUT (or /tmp/gpu-ncu).
set -uo pipefail
G="$(cd "$1" && pwd)"
shift
labels=("$@")
[ ${#labels[@]} -eq 0 ] && labels=("down 4096x14336@4" "gate/up 14336x4096@4" "gate/up 14336x4096@8")
O="${OUT:-/tmp/gpu-ncu}"
W=/tmp/gpu-ncu-w
mkdir -p "$O" "$W"
cd "$W" || exit 1
gzip -dc "$G/matvec_bw.gz" >matvec_bw && chmod +x matvec_bw
printf '[compilation]\ncache = { file = "%s/cc" }\n' "$W" >cubecl.toml
NCU="$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)"
echo "== $(date -u '+%F %T UTC') $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader) ncu=$NCU"
timeout 200 ./matvec_bw cuda 50 "${FILTER:-}" 2>&1 | tee "$O/timing.txt"
i=0
for l in "${labels[@]}"; do
  i=$((i + 1))
  skip="${l##*@}"
  l="${l%@*}"
  timeout 200 "$NCU" --kernel-name regex:matvec --launch-skip "$skip" --launch-count 1 --set full \
    -f -o "$W/p$i" ./matvec_bw cuda 1 "$l" >"$W/p$i.log" 2>&1
  tail -3 "$W/p$i.log"
  "$NCU" -i "$W/p$i.ncu-rep" --page details >"$O/details$i.txt" 2>&1
  "$NCU" -i "$W/p$i.ncu-rep" --page source --print-source sass --csv >"$W/sass$i.csv" 2>&1
  gzip -c "$W/sass$i.csv" >"$O/sass$i.csv.gz"
  echo "== $l: $(grep -E 'Duration|Registers Per|Achieved Occupancy|DRAM Throughput|Issue Slots Busy' "$O/details$i.txt" | tr -s ' ' | tr '\n' ';')"
done
