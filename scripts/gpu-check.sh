#!/usr/bin/env bash
# Runs on the GPU machine from a folder made by scripts/build-cuda.sh (hearth, this script,
# fixture_compare.py, fixtures/models):
#
#   gpu-bin/gpu-check.sh [WORK_DIR]          # correctness: every fixture model, cuda and cpu
#   GPU_CHECK_BENCH=1 gpu-bin/gpu-check.sh   # also bench `--synthetic llama-3.2-1b` (random f32)
#
# For each fixture model and both prompts it runs `hearth logits --backend cuda` (and
# `--backend cpu` for comparison), and compares against the fixture's float64 transformers
# reference with fixture_compare.py (pure python): max rel error of the prefill logits and of
# the greedy steps' logits, and whether the greedy ids match. Exit status 1 if any check fails.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$here/hearth"
cmp="$here/fixture_compare.py"
models="${HEARTH_FIXTURES:-$here/fixtures}/models"
work="${1:-/tmp/gpu-check}"
backends="${GPU_CHECK_BACKENDS:-cuda cpu}"
tmo="${GPU_CHECK_TIMEOUT:-180}" # seconds per hearth invocation
mkdir -p "$work"

# Kernels compiled by NVRTC and autotune results are cached on disk here, so that later runs
# (and the warm bench below) do not pay for compilation again.
cat >"$work/cubecl.toml" <<TOML
[compilation]
cache = { file = "$work/cubecl-cache" }

[autotune]
cache = { file = "$work/cubecl-cache" }
TOML
cd "$work"

echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi failed"
echo "== fixtures ($backends), tolerance rel <= 1e-3 and exact greedy ids"
fail=0
for dir in "$models"/*/; do
  m="$(basename "$dir")"
  ref="$dir/reference.safetensors"
  for backend in $backends; do
    for p in 0 1; do
      ids="$(python3 "$cmp" --ids "$ref" "$p")"
      n="$(python3 "$cmp" --steps "$ref" "$p")"
      out="$work/$m.$backend.p$p.safetensors"
      t0=$(date +%s.%N)
      if ! timeout "$tmo" "$bin" logits --model "$dir" --backend "$backend" --tokens "$ids" --greedy "$n" --out "$out" \
        2>"$work/$m.$backend.p$p.log"; then
        echo "$m $backend prompt$p: hearth logits FAILED:"
        tail -5 "$work/$m.$backend.p$p.log"
        fail=1
        continue
      fi
      dt=$(python3 -c "import sys; print('%.1fs' % (float(sys.argv[2]) - float(sys.argv[1])))" "$t0" "$(date +%s.%N)")
      python3 "$cmp" "$ref" "$p" "$out" "$m $backend ($dt)" || fail=1
    done
  done
done

echo "== compute dtypes other than f32 on cuda must be rejected"
# The CLI has no --dtype flag (BackendKind::check_dtype is unit-tested in hearth-backend); the
# dtype knob it has is --quant, which must not be silently ignored on a device backend.
for q in bf16 f16 q8_0; do
  if "$bin" logits --model "$models/llama" --backend cuda --quant "$q" --tokens 0 --out "$work/x.safetensors" \
    >/dev/null 2>"$work/quant-$q.log"; then
    echo "FAIL: --backend cuda --quant $q was accepted (weights silently stay f32 on the device)"
    fail=1
  elif grep -q '^error:' "$work/quant-$q.log"; then
    echo "ok: --backend cuda --quant $q rejected: $(grep -m1 '^error:' "$work/quant-$q.log")"
  else
    echo "FAIL: --backend cuda --quant $q crashed instead of a clean error:"
    grep -m1 -A1 panicked "$work/quant-$q.log"
    fail=1
  fi
done

if [ "${GPU_CHECK_BENCH:-0}" = 1 ]; then
  echo "== bench: --synthetic llama-3.2-1b (random f32 weights), prompt 128"
  # The first run compiles (NVRTC) and autotunes every kernel; the next ones reuse the cache.
  echo "-- cuda, cold kernel cache, decode 32"
  timeout "$tmo" "$bin" bench --synthetic llama-3.2-1b --backend cuda --prompt-len 128 --decode 32 || fail=1
  echo "-- cuda, warm kernel cache, decode 1 and 129 (steady-state decode = 128 / (t129 - t1))"
  timeout "$tmo" "$bin" bench --synthetic llama-3.2-1b --backend cuda --prompt-len 128 --decode 1 || fail=1
  timeout "$tmo" "$bin" bench --synthetic llama-3.2-1b --backend cuda --prompt-len 128 --decode 129 || fail=1
  if [ "${GPU_CHECK_BENCH_CPU:-1}" = 1 ]; then
    echo "-- cpu ($(nproc) cores)"
    timeout "$tmo" "$bin" bench --synthetic llama-3.2-1b --backend cpu --prompt-len 128 --decode 16 || fail=1
  fi
fi

if [ "$fail" = 0 ]; then echo "== ALL OK"; else echo "== FAILURES"; fi
exit "$fail"
