#!/usr/bin/env bash
# Issue 7, stop 24: MLA decode with many heads on a CUDA machine, in one device command:
#
#   scripts/gpu-mla.sh BUNDLE
#
# 1. hearth-backend's `many_heads_attention_matches_host` (16 to 128 heads on one latent head,
#    values a view of the key rows, against a float64 host computation) and
#    `fused_attention_matches_fallback` on CUDA;
# 2. `hearth bench --synthetic moonlight-16b-a3b --backend cuda --dtype bf16` (DeepSeek-V3's
#    architecture, 16 heads on a 512-wide latent) at a long prompt, the group folded into
#    batched products (HEARTH_ATTN_FOLD=1, opt-in) and the general per-head kernel (=0);
# 3. with NCU=1, scripts/gpu-ncu-matvec.sh (Nsight Compute on the Q8_0 matvecs).
#
# BUNDLE is scripts/build-cuda.sh's gpu-bin/. Results go to $OUT when set.
set -uo pipefail
G="$(cd "$1" && pwd)"
R="$(cd "$(dirname "$0")" && pwd)"
O="${OUT:-/tmp/gpu-mla-out}"
W=/tmp/gpu-mla
mkdir -p "$W" "$O"
cd "$W" || exit 1
gzip -dc "$G/hearth.gz" >h && gzip -dc "$G/tests/kernels.gz" >k && chmod +x h k
printf '[compilation]\ncache = { file = "%s/cc" }\n' "$W" >cubecl.toml
echo "== $(date -u '+%F %T UTC') $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
fail=0
echo "== kernel tests (cuda): many-heads and fused attention"
timeout "${TEST_TIMEOUT:-300}" ./k --test-threads=2 --nocapture many_heads_attention fused_attention 2>&1 \
  | grep -E '^test |test result|panicked|assert|many-heads' | tail -20
[ "${PIPESTATUS[0]}" = 0 ] || { echo "FAIL: kernel tests"; fail=1; }
for fold in 1 0; do
  label="moonlight bf16 fold=$fold"
  echo "== $label"
  HEARTH_ATTN_FOLD=$fold timeout 240 ./h bench --backend cuda --synthetic moonlight-16b-a3b --dtype bf16 \
    --prompt-len "${PROMPT:-1024}" --decode 32 --runs 2 2>"$W/err.log" | tail -1 | sed "s/^{/{\"label\":\"$label\",/" \
    | tee -a "$O/bench.jsonl"
  grep -E "^error|panicked" "$W/err.log" | head -3
done
if [ "${NCU:-0}" = 1 ]; then
  cd - >/dev/null || exit 1
  FILTER="${NCU_FILTER:-Q8_0}" OUT="$O" "$R/gpu-ncu-matvec.sh" "$G" 2>&1 | cut -c1-600 | tail -12
fi
if [ "$fail" = 0 ]; then echo "== ALL OK"; else echo "== FAILURES"; fi
exit "$fail"
