#!/usr/bin/env bash
# Issue 7, stop 23: the carried norm sums (HEARTH_NORM_SUMS) on a CUDA machine, in one device
# command (~7 min on an H200):
#
#   scripts/gpu-norm-sums.sh BUNDLE
#
# 1. hearth-backend's `carried_norm_sums_match_unfused` and the packed/dense matvec tests on CUDA;
# 2. every fixture model in f32 with HEARTH_NORM_SUMS=1 (rel <= 1e-4, identical greedy ids);
# 3. `hearth bench --synthetic llama-3.1-8b --backend cuda` bf16 and Q8_0, prompt 128, decode 64,
#    2 runs, HEARTH_NORM_SUMS=0 then 1, each against the stream probe of its own process;
# 4. with `nsys` on the machine: the kernel timeline of 8 Q8_0 decode steps (gaps between
#    kernels, per-kernel durations) as CSV.
#
# BUNDLE is scripts/build-cuda.sh's gpu-bin/. Results go to $OUT when set.
set -uo pipefail
G="$(cd "$1" && pwd)"
O="${OUT:-/tmp/gpu-norm-sums-out}"
W=/tmp/gpu-norm-sums
mkdir -p "$W" "$O"
cd "$W" || exit 1
gzip -dc "$G/hearth.gz" >h && gzip -dc "$G/tests/kernels.gz" >k && chmod +x h k
printf '[compilation]\ncache = { file = "%s/cc" }\n' "$W" >cubecl.toml
echo "== $(date -u '+%F %T UTC') $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
echo "== tools: $(command -v nsys ncu | tr '\n' ' ')"
fail=0
if [ "${STAGE_TESTS:-1}" = 1 ]; then
  echo "== kernel tests (cuda): norm sums, packed and dense matvecs"
  timeout 240 ./k --test-threads=4 carried_norm_sums packed dense fused moe 2>&1 | grep -E '^test |test result|panicked|assert' | tail -20
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "FAIL: kernel tests"; fail=1; }
fi
if [ "${STAGE_FIXTURES:-1}" = 1 ]; then
  cmp="$G/fixture_compare.py"
  echo "== fixtures, cuda f32, HEARTH_NORM_SUMS=1"
  for dir in "$G"/fixtures/models/*/; do
    m="$(basename "$dir")"
    ref="$dir/reference.safetensors"
    for p in 0 1; do
      ids="$(python3 "$cmp" --ids "$ref" "$p")"
      n="$(python3 "$cmp" --steps "$ref" "$p")"
      if HEARTH_NORM_SUMS=1 timeout 60 ./h logits --model "$dir" --backend cuda --tokens "$ids" --greedy "$n" \
        --out "$m.p$p.st" 2>"$m.p$p.log"; then
        python3 "$cmp" --tol 1e-4 "$ref" "$p" "$m.p$p.st" "$m cuda f32 norm-sums" || fail=1
      else
        echo "$m prompt$p: FAILED: $(tail -2 "$m.p$p.log")"
        fail=1
      fi
    done
  done | tee "$O/fixtures.txt"
  grep -q "FAIL" "$O/fixtures.txt" && fail=1
fi
if [ "${STAGE_BENCH:-1}" = 1 ]; then
  for q in "--dtype bf16" "--dtype bf16 --quant q8_0"; do
    for ns in 0 1; do
      label="8b ${q#--dtype bf16} norm_sums=$ns"
      echo "== $label"
      HEARTH_NORM_SUMS=$ns timeout 200 ./h bench --backend cuda --synthetic llama-3.1-8b $q --prompt-len 128 \
        --decode 64 --runs 2 2>"$W/err.log" | tail -1 | sed "s/^{/{\"label\":\"$label\",/" | tee -a "$O/bench.jsonl"
      grep -E "^error|panicked" "$W/err.log" | head -3
    done
  done
fi
if [ "${STAGE_NSYS:-1}" = 1 ] && command -v nsys >/dev/null; then
  echo "== nsys: 8b q8_0, decode 8, HEARTH_NORM_SUMS=${NSYS_NORM_SUMS:-1}"
  HEARTH_NORM_SUMS=${NSYS_NORM_SUMS:-1} timeout 240 nsys profile -t cuda -o "$W/q8" -f true ./h bench --backend cuda \
    --synthetic llama-3.1-8b --dtype bf16 --quant q8_0 --prompt-len 128 --decode 8 --runs 1 >/dev/null 2>"$W/nsys.err"
  nsys stats -q --report cuda_gpu_trace --format csv -o "$W/trace" "$W/q8.nsys-rep" >/dev/null 2>&1
  f="$(ls "$W"/trace*.csv 2>/dev/null | head -1)"
  # the last 800 kernels: the end of the decode run
  [ -n "$f" ] && tail -800 "$f" | gzip -c >"$O/q8_trace_tail.csv.gz" && echo "trace: $(wc -l <"$f") lines"
  tail -3 "$W/nsys.err"
fi
if [ "$fail" = 0 ]; then echo "== ALL OK"; else echo "== FAILURES"; fi
exit "$fail"
