#!/usr/bin/env bash
# The tensor-core matvecs (cube::mma) against the unit kernels on a CUDA machine:
#
#   scripts/gpu-mma.sh BUNDLE tests                # their correctness tests on CUDA
#   scripts/gpu-mma.sh BUNDLE sweep SHAPE...       # matvec_bw (8B shapes) per HEARTH_MATVEC shape
#   scripts/gpu-mma.sh BUNDLE bench SHAPE...       # 8B decode, bf16 and Q8_0, per shape
#
# SHAPE is a HEARTH_MATVEC value (`default` = the tuned shapes, e.g. `mma=1,units=256,unroll=8`);
# `nosums:SHAPE` runs it with HEARTH_NORM_SUMS=0 (the tensor-core kernels take no carried norm).
# BUNDLE is scripts/build-cuda.sh's gpu-bin/. Results go to $OUT when set.
set -uo pipefail
G="$(cd "$1" && pwd)"
mode="$2"
shift 2
O="${OUT:-/tmp/gpu-mma-out}"
W=/tmp/gpu-mma
mkdir -p "$W" "$O"
cd "$W" || exit 1
for b in hearth matvec_bw; do [ -x "$b" ] || { gzip -dc "$G/$b.gz" >"$b" && chmod +x "$b"; }; done
for t in kernels half_precision; do [ -x "$t" ] || { gzip -dc "$G/tests/$t.gz" >"$t" && chmod +x "$t"; }; done
printf '[compilation]\ncache = { file = "%s/cc" }\n' "$W" >cubecl.toml
echo "== $(date -u '+%F %T UTC') $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
fail=0
with_shape() { # with_shape SHAPE CMD...   (SHAPE `nosums:S` also sets HEARTH_NORM_SUMS=0)
  local s="$1" sums=1
  shift
  case "$s" in nosums:*) sums=0 s="${s#nosums:}" ;; esac
  if [ "$s" = default ]; then HEARTH_NORM_SUMS=$sums "$@"; else HEARTH_NORM_SUMS=$sums HEARTH_MATVEC="$s" "$@"; fi
}
case "$mode" in
  tests)
    timeout "${TEST_TIMEOUT:-400}" ./kernels --test-threads=1 q8_tensor_cores --nocapture 2>&1 \
      | grep -E '^test |test result|panicked|assert|rel|err' | tail -30
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "FAIL: q8_tensor_cores"; fail=1; }
    timeout "${TEST_TIMEOUT:-400}" ./half_precision --test-threads=1 --nocapture 2>&1 \
      | grep -E '^test |test result|panicked|assert|dense' | tail -30
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "FAIL: half_precision"; fail=1; }
    ;;
  sweep)
    for s in "$@"; do
      echo "== HEARTH_MATVEC=$s" | tee -a "$O/sweep.txt"
      with_shape "$s" timeout 150 ./matvec_bw cuda "${ITERS:-50}" "${FILTER:-}" 2>&1 \
        | grep -v '^matvec shape\|attn' | tee -a "$O/sweep.txt"
    done
    ;;
  bench)
    for s in "$@"; do
      for q in none q8_0; do
        label="8b bf16 quant=$q shape=$s"
        echo "== $label"
        extra=()
        [ "$q" != none ] && extra=(--quant "$q")
        with_shape "$s" timeout 200 ./hearth bench --backend cuda --synthetic llama-3.1-8b --dtype bf16 "${extra[@]}" \
          --prompt-len 128 --decode 64 --runs 2 2>"$W/err.log" | tail -1 | sed "s/^{/{\"label\":\"$label\",/" \
          | tee -a "$O/bench.jsonl" | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(d['label'], d['decode_runs_tok_s'], round(d['pct_of_floor'],1), '% of', round(d['read_bandwidth_gb_s']), 'GB/s')"
        grep -E "^error|panicked" "$W/err.log" | head -3
      done
    done
    ;;
  *)
    echo "unknown mode $mode" >&2
    exit 2
    ;;
esac
if [ "$fail" = 0 ]; then echo "== ALL OK"; else echo "== FAILURES"; fi
exit "$fail"
