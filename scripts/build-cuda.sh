#!/usr/bin/env bash
# Builds the `hearth` binary with the CUDA backend (plus the default CPU backend) in release and
# copies it to gpu-bin/, together with the fixture models, for running on a GPU machine with
# scripts/gpu-check.sh. Nothing CUDA is needed here: cubecl compiles kernels at run time (NVRTC).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p hearth-cli --features cuda
mkdir -p gpu-bin
cp target/release/hearth gpu-bin/hearth
strip gpu-bin/hearth 2>/dev/null || true # smaller to carry
cp scripts/gpu-check.sh scripts/fixture_compare.py gpu-bin/

fixtures="${HEARTH_FIXTURES:-$(cd .. && pwd)/shared/fixtures}"
if [ -d "$fixtures/models" ]; then
  rm -rf gpu-bin/fixtures
  mkdir -p gpu-bin/fixtures
  cp -r "$fixtures/models" gpu-bin/fixtures/models
else
  echo "warning: fixtures not found at $fixtures; gpu-bin/fixtures not refreshed" >&2
fi
ls -la gpu-bin
