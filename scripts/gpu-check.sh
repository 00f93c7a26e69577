#!/usr/bin/env bash
# Runs on the GPU machine from the folder made by scripts/build-cuda.sh (gpu-bin/: hearth.gz,
# tests/*.gz, this script, fixture_compare.py, fixtures/models):
#
#   gpu-bin/gpu-check.sh [WORK_DIR]
#
# Stages (environment variables, 1 = on):
#   GPU_CHECK_TESTS=1     hearth-backend's kernel tests on CUDA: every cubecl kernel against its
#                         burn-op fallback and a float64 host reference (exact-f32 matmul, i.e. no
#                         TF32), with plane and shared-memory reductions; then the bf16 binary.
#   GPU_CHECK_FIXTURES=1  every fixture model, both prompts, `hearth logits --backend B` against
#                         the float64 transformers reference (fixture_compare.py): max rel error of
#                         the prefill and greedy-step logits <= GPU_CHECK_TOL (default 1e-4, as on
#                         the CPU) and identical greedy ids. GPU_CHECK_BACKENDS (default "cuda").
#   GPU_CHECK_BENCH=0     `hearth bench --synthetic llama-3.2-1b` (random f32 weights), cold and
#                         warm kernel cache, once per HEARTH_MATMUL plan in GPU_CHECK_MATMUL
#                         (space-separated; "default" = hearth's plan, "vec=auto;mat=auto" = burn's
#                         TF32 tensor-core matmul, for comparison), plus the CPU if
#                         GPU_CHECK_BENCH_CPU=1.
# Exit status 1 if any check fails. Each stage fits in one 10-minute device command.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-/tmp/gpu-check}"
mkdir -p "$work/bin"
cmp="$here/fixture_compare.py"
models="${HEARTH_FIXTURES:-$here/fixtures}/models"
backends="${GPU_CHECK_BACKENDS:-cuda}"
tol="${GPU_CHECK_TOL:-1e-4}"
tmo="${GPU_CHECK_TIMEOUT:-180}" # seconds per hearth invocation

# unpack the binaries (build-cuda.sh gzips them)
unpack() { # unpack NAME.gz|NAME DEST
  if [ -f "$1.gz" ]; then gzip -dc "$1.gz" >"$2" && chmod +x "$2"; elif [ -f "$1" ]; then cp "$1" "$2"; else return 1; fi
}
bin="$work/bin/hearth"
unpack "$here/hearth" "$bin" || { echo "no hearth binary in $here"; exit 1; }

# Kernels compiled by NVRTC (and autotune results, unused without burn's autotune) are cached on
# disk here, so that later runs do not pay for compilation again.
cat >"$work/cubecl.toml" <<TOML
[compilation]
cache = { file = "$work/cubecl-cache" }

[autotune]
cache = { file = "$work/cubecl-cache" }
TOML
cd "$work"

echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi failed"
fail=0

if [ "${GPU_CHECK_TESTS:-1}" = 1 ]; then
  for t in kernels half_precision; do
    echo "== kernel tests: $t"
    if ! unpack "$here/tests/$t" "$work/bin/$t"; then
      echo "FAIL: test binary $t missing (run scripts/build-cuda.sh)"
      fail=1
      continue
    fi
    timeout 540 "$work/bin/$t" --test-threads=1 --nocapture 2>&1 | grep -vE '^\s*$' | tail -60
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "FAIL: $t"; fail=1; }
  done
fi

if [ "${GPU_CHECK_FIXTURES:-1}" = 1 ]; then
  echo "== fixtures ($backends), tolerance rel <= $tol and exact greedy ids"
  for dir in "$models"/*/; do
    m="$(basename "$dir")"
    ref="$dir/reference.safetensors"
    for backend in $backends; do
      for p in 0 1; do
        ids="$(python3 "$cmp" --ids "$ref" "$p")"
        n="$(python3 "$cmp" --steps "$ref" "$p")"
        out="$work/$m.$backend.p$p.safetensors"
        t0=$(date +%s.%N)
        if ! timeout "$tmo" "$bin" logits --model "$dir" --backend "$backend" --tokens "$ids" --greedy "$n" \
          --out "$out" 2>"$work/$m.$backend.p$p.log"; then
          echo "$m $backend prompt$p: hearth logits FAILED:"
          tail -5 "$work/$m.$backend.p$p.log"
          fail=1
          continue
        fi
        dt=$(python3 -c "import sys; print('%.1fs' % (float(sys.argv[2]) - float(sys.argv[1])))" "$t0" "$(date +%s.%N)")
        python3 "$cmp" --tol "$tol" "$ref" "$p" "$out" "$m $backend ($dt)" || fail=1
      done
    done
  done

  echo "== quantized weights on cuda must be a clean error or run, never a panic"
  # `--quant` quantizes in situ for the CPU kernels; a device backend must refuse it cleanly.
  for q in bf16 f16 q8_0; do
    if "$bin" logits --model "$models/llama" --backend cuda --quant "$q" --tokens 0 --out "$work/x.safetensors" \
      >/dev/null 2>"$work/quant-$q.log"; then
      echo "note: --backend cuda --quant $q was accepted"
    elif grep -q '^error:' "$work/quant-$q.log"; then
      echo "ok: --backend cuda --quant $q rejected: $(grep -m1 '^error:' "$work/quant-$q.log")"
    else
      echo "FAIL: --backend cuda --quant $q crashed instead of a clean error:"
      grep -m1 -A1 panicked "$work/quant-$q.log"
      fail=1
    fi
  done
fi

if [ "${GPU_CHECK_BENCH:-0}" = 1 ]; then
  for plan in ${GPU_CHECK_MATMUL:-default}; do
    if [ "$plan" = default ]; then unset HEARTH_MATMUL; else export HEARTH_MATMUL="$plan"; fi
    echo "== bench --synthetic llama-3.2-1b, prompt 128, HEARTH_MATMUL=${HEARTH_MATMUL:-<hearth default>}"
    # The first run compiles (NVRTC) every kernel; the next ones reuse the disk cache.
    echo "-- cuda, cold kernel cache, decode 32"
    timeout "$tmo" "$bin" bench --synthetic llama-3.2-1b --backend cuda --prompt-len 128 --decode 32 || fail=1
    echo "-- cuda, warm kernel cache, decode 1 and 129 (steady-state decode = 128 / (t129 - t1))"
    timeout "$tmo" "$bin" bench --synthetic llama-3.2-1b --backend cuda --prompt-len 128 --decode 1 || fail=1
    timeout "$tmo" "$bin" bench --synthetic llama-3.2-1b --backend cuda --prompt-len 128 --decode 129 || fail=1
  done
  unset HEARTH_MATMUL
  if [ "${GPU_CHECK_BENCH_CPU:-0}" = 1 ]; then
    echo "-- cpu ($(nproc) cores)"
    timeout "$tmo" "$bin" bench --synthetic llama-3.2-1b --backend cpu --prompt-len 128 --decode 16 || fail=1
  fi
fi

if [ "$fail" = 0 ]; then echo "== ALL OK"; else echo "== FAILURES"; fi
exit "$fail"
