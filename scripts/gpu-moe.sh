#!/usr/bin/env bash
# Issue 7, stop 23: the grouped MoE decode kernels on a CUDA machine, in one device command:
#
#   scripts/gpu-moe.sh BUNDLE
#
# 1. hearth-backend's `moe_experts_match_expert_by_expert` and `carried_norm_sums_match_unfused`
#    on CUDA (against a float64 host product and the expert-by-expert fallback);
# 2. `hearth bench --synthetic olmoe-1b-7b --quant q8_0 --backend cuda` (bf16 activations), with
#    hearth's fused kernels (the grouped expert step) and with HEARTH_FUSED=0 (burn ops, one
#    product chain per expert), each against the stream probe of its own process.
#
# BUNDLE is scripts/build-cuda.sh's gpu-bin/. Results go to $OUT when set.
set -uo pipefail
G="$(cd "$1" && pwd)"
O="${OUT:-/tmp/gpu-moe-out}"
W=/tmp/gpu-moe
mkdir -p "$W" "$O"
cd "$W" || exit 1
gzip -dc "$G/hearth.gz" >h && gzip -dc "$G/tests/kernels.gz" >k && chmod +x h k
printf '[compilation]\ncache = { file = "%s/cc" }\n' "$W" >cubecl.toml
echo "== $(date -u '+%F %T UTC') $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
fail=0
echo "== kernel tests (cuda): moe, norm sums"
timeout "${TEST_TIMEOUT:-300}" ./k --test-threads=2 moe_experts carried_norm_sums 2>&1 | grep -E '^test |test result|panicked|assert' | tail -20
[ "${PIPESTATUS[0]}" = 0 ] || { echo "FAIL: kernel tests"; fail=1; }
for fused in 1 0; do
  label="olmoe q8_0 fused=$fused"
  echo "== $label"
  HEARTH_FUSED=$fused HEARTH_NORM_SUMS=1 timeout 140 ./h bench --backend cuda --synthetic olmoe-1b-7b --dtype bf16 \
    --quant q8_0 --prompt-len 128 --decode 64 --runs 2 2>"$W/err.log" | tail -1 | sed "s/^{/{\"label\":\"$label\",/" \
    | tee -a "$O/bench.jsonl"
  grep -E "^error|panicked" "$W/err.log" | head -3
done
if [ "$fail" = 0 ]; then echo "== ALL OK"; else echo "== FAILURES"; fi
exit "$fail"
