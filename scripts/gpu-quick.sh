#!/usr/bin/env bash
# One short CUDA session (fits one device command): kernel tests, two fixture models at rel 1e-4,
# and decode speed of packed Q8_0 / Q4_K weights against the device bandwidth measured in the same
# run. Run from the repository root on the GPU machine after scripts/build-cuda.sh made gpu-bin/.
set -uo pipefail
G="$(pwd)/gpu-bin"
W=/tmp/gq
mkdir -p "$W"
cd "$W" || exit 1
gzip -dc "$G/hearth.gz" >h && gzip -dc "$G/tests/kernels.gz" >k && chmod +x h k
printf '[compilation]\ncache = { file = "%s/cc" }\n' "$W" >cubecl.toml
echo "== $(date -u '+%F %T UTC') $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
echo "== kernel tests (cuda)"
timeout 150 ./k --test-threads=4 2>&1 | grep -E '^test |test result|panicked' | tail -20
cmp="$G/fixture_compare.py"
for m in llama deepseek_v3; do
  ref="$G/fixtures/models/$m/reference.safetensors"
  ids="$(python3 "$cmp" --ids "$ref" 0)"
  n="$(python3 "$cmp" --steps "$ref" 0)"
  timeout 60 ./h logits --model "$G/fixtures/models/$m" --backend cuda --tokens "$ids" --greedy "$n" --out "$m.st" 2>"$m.log" \
    && python3 "$cmp" --tol 1e-4 "$ref" 0 "$m.st" "$m cuda f32" || tail -3 "$m.log"
done
for a in "llama-3.2-1b q8_0 90" "llama-3.2-1b q4_k 60" "llama-3.1-8b q8_0 150"; do
  set -- $a
  echo "== bench --synthetic $1 --backend cuda --quant $2"
  timeout "$3" ./h bench --synthetic "$1" --backend cuda --quant "$2" --prompt-len 64 --decode 64 --runs 2 2>&1 | tail -2
done
