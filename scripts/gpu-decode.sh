#!/usr/bin/env bash
# The decode-speed session of issue 7 on a CUDA machine, in two device commands:
#
#   scripts/gpu-decode.sh BUNDLE check   # kernel tests; every fixture model in f32 (rel <= 1e-4,
#                                        # identical greedy ids) and in bf16 compute (first 8
#                                        # greedy ids identical, rel <= GPU_BF16_TOL, default 5e-2)
#   scripts/gpu-decode.sh BUNDLE bench   # per-op profile of a llama-3.2-1b Q8_0 decode step, then
#                                        # `bench` of llama-3.2-1b / llama-3.1-8b, Q8_0 and bf16,
#                                        # with hearth's fused kernels and (1b) HEARTH_FUSED=0
#
# BUNDLE is the folder scripts/build-cuda.sh made (gpu-bin/: hearth.gz, tests/*.gz,
# fixture_compare.py, fixtures/models). Results (JSON lines, logs) go to $OUT when set.
set -uo pipefail
G="$(cd "$1" && pwd)"
stage="$2"
O="${OUT:-/tmp/gpu-decode-out}"
W=/tmp/gpu-decode
mkdir -p "$W" "$O"
cd "$W" || exit 1
gzip -dc "$G/hearth.gz" >h && chmod +x h
printf '[compilation]\ncache = { file = "%s/cc" }\n' "$W" >cubecl.toml
echo "== $(date -u '+%F %T UTC') $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
cmp="$G/fixture_compare.py"
fail=0
if [ "$stage" = check ]; then
  for t in kernels half_precision; do
    echo "== kernel tests (cuda): $t"
    gzip -dc "$G/tests/$t.gz" >"$t" && chmod +x "$t"
    timeout 200 "./$t" --test-threads=4 2>&1 | grep -E '^test |test result|panicked|assert' | tail -30
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "FAIL: $t"; fail=1; }
  done
  for dtype in f32 bf16; do
    echo "== fixtures, cuda, --dtype $dtype"
    for dir in "$G"/fixtures/models/*/; do
      m="$(basename "$dir")"
      ref="$dir/reference.safetensors"
      for p in 0 1; do
        ids="$(python3 "$cmp" --ids "$ref" "$p")"
        n="$(python3 "$cmp" --steps "$ref" "$p")"
        out="$m.$dtype.p$p.safetensors"
        if ! timeout 60 ./h logits --model "$dir" --backend cuda --dtype "$dtype" --tokens "$ids" --greedy "$n" \
          --out "$out" 2>"$m.$dtype.p$p.log"; then
          echo "$m $dtype prompt$p: FAILED: $(tail -2 "$m.$dtype.p$p.log")"
          fail=1
          continue
        fi
        if [ "$dtype" = f32 ]; then
          python3 "$cmp" --tol 1e-4 "$ref" "$p" "$out" "$m cuda f32" || fail=1
        else
          python3 "$cmp" --tol "${GPU_BF16_TOL:-5e-2}" --ids-prefix 8 "$ref" "$p" "$out" "$m cuda bf16" || fail=1
        fi
      done
    done
  done | tee "$O/fixtures.txt"
  grep -q "FAIL" "$O/fixtures.txt" && fail=1
fi
if [ "$stage" = bench ]; then
  echo "== profile: llama-3.2-1b q8_0, one decode step"
  HEARTH_PROFILE=1 timeout 120 ./h bench --backend cuda --synthetic llama-3.2-1b --quant q8_0 --prompt-len 64 \
    --decode 8 >"$O/profile_1b.json" 2>"$O/profile_1b.err" || fail=1
  grep -A200 '^profile:' "$O/profile_1b.err" | tr -d ' \n' | head -c 3000; echo
  b() { # b LABEL ENV... -- ARGS
    local label="$1"; shift
    echo "== $label"
    env "$@" --prompt-len 64 --decode 64 --runs 2 2>"$W/err.log" | tail -1 | sed "s/^{/{\"label\":\"$label\",/" | tee -a "$O/bench.jsonl"
    grep -E "^error|panicked" "$W/err.log" | head -3
  }
  b "1b q8_0" timeout 150 ./h bench --backend cuda --synthetic llama-3.2-1b --quant q8_0
  b "1b q8_0 unfused" HEARTH_FUSED=0 timeout 150 ./h bench --backend cuda --synthetic llama-3.2-1b --quant q8_0
  b "1b bf16" timeout 150 ./h bench --backend cuda --synthetic llama-3.2-1b --dtype bf16
  b "8b q8_0" timeout 200 ./h bench --backend cuda --synthetic llama-3.1-8b --quant q8_0
  b "8b bf16" timeout 200 ./h bench --backend cuda --synthetic llama-3.1-8b --dtype bf16
fi
if [ "$fail" = 0 ]; then echo "== ALL OK"; else echo "== FAILURES"; fi
exit "$fail"
