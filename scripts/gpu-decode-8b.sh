#!/usr/bin/env bash
# One device command for a matvec change on a CUDA machine:
#
#   scripts/gpu-decode-8b.sh BUNDLE
#
# 1. hearth-backend's matvec, attention and MoE kernel tests on CUDA (against host products and
#    the burn-op fallbacks, every launch shape);
# 2. `matvec_bw cuda 50` (the kernels alone at llama-3.1-8b's shapes and MLA attention at 16 and
#    128 heads), then its attention lines again with HEARTH_ATTN_FOLD=1 (the folded group);
# 3. `hearth bench --synthetic llama-3.1-8b --backend cuda --dtype bf16 [--quant q8_0]
#    --prompt-len 128 --decode 64 --runs 2`, each against the stream probe of its own process.
#
# BUNDLE is scripts/build-cuda.sh's gpu-bin/. Results go to $OUT when set.
set -uo pipefail
G="$(cd "$1" && pwd)"
O="${OUT:-/tmp/gpu-decode-8b-out}"
W=/tmp/gpu-decode-8b
mkdir -p "$W" "$O"
cd "$W" || exit 1
for b in hearth matvec_bw; do gzip -dc "$G/$b.gz" >"$b"; done
gzip -dc "$G/tests/kernels.gz" >kernels
chmod +x hearth matvec_bw kernels
printf '[compilation]\ncache = { file = "%s/cc" }\n' "$W" >cubecl.toml
echo "== $(date -u '+%F %T UTC') $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
fail=0
echo "== kernel tests (cuda)"
timeout "${TEST_TIMEOUT:-300}" ./kernels --test-threads=2 matvec packed dense fused norm attention moe 2>&1 \
  | grep -E '^test |test result|panicked|assert' | tail -30
[ "${PIPESTATUS[0]}" = 0 ] || { echo "FAIL: kernel tests"; fail=1; }
echo "== matvec_bw"
timeout 240 ./matvec_bw cuda 50 "${FILTER:-}" 2>&1 | grep -v '^matvec shape' | tee "$O/matvec_bw.txt"
echo "== matvec_bw attention, HEARTH_ATTN_FOLD=1"
HEARTH_ATTN_FOLD=1 timeout 120 ./matvec_bw cuda 50 attn 2>&1 | grep attn | tee -a "$O/matvec_bw.txt"
for q in none q8_0; do
  label="8b bf16 quant=$q"
  echo "== $label"
  extra=()
  [ "$q" != none ] && extra=(--quant "$q")
  timeout 200 ./hearth bench --backend cuda --synthetic llama-3.1-8b --dtype bf16 "${extra[@]}" \
    --prompt-len 128 --decode 64 --runs 2 2>"$W/err.log" | tail -1 | sed "s/^{/{\"label\":\"$label\",/" \
    | tee -a "$O/bench.jsonl" | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(d['label'], d['decode_runs_tok_s'], round(d['pct_of_floor'],1), '% of', round(d['read_bandwidth_gb_s']), 'GB/s')"
  grep -E "^error|panicked" "$W/err.log" | head -3
done
if [ "$fail" = 0 ]; then echo "== ALL OK"; else echo "== FAILURES"; fi
exit "$fail"
