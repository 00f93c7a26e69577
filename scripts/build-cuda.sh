#!/usr/bin/env bash
# Builds everything a CUDA machine needs into gpu-bin/ (git-ignored), for scripts/gpu-check.sh.
# Nothing CUDA is needed here: cubecl compiles kernels at run time with NVRTC.
#
#   gpu-bin/hearth.gz                   the `hearth` CLI, release, --features cuda (and cpu)
#   gpu-bin/matvec_bw.gz                the matvec bandwidth example (kernels alone, HEARTH_MATVEC sweeps)
#   gpu-bin/tests/kernels.gz            hearth-backend's kernel tests (tests/kernels.rs) on CUDA
#   gpu-bin/tests/half_precision.gz     the same kernels with bf16 compute (tests/half_precision.rs)
#   gpu-bin/fixtures/models/            the fixture models and their float64 references
#   gpu-bin/gpu-check.sh, fixture_compare.py
#
# Binaries are stripped and gzip'ed (30 MB → 8 MB for hearth) so that gpu-bin/ stays well under
# the 64 MiB a device run may carry; gpu-check.sh unpacks them. Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
out=gpu-bin

cargo build --release --locked -p hearth-cli --features cuda
cargo build --release --locked -p hearth-backend --features cuda --example matvec_bw
# The test binaries: their paths come from cargo's JSON messages.
tests_json="$(mktemp)"
trap 'rm -f "$tests_json"' EXIT
cargo test --release --locked -p hearth-backend --features cuda --no-run \
  --test kernels --test half_precision --message-format=json >"$tests_json"

rm -rf "$out/tests" "$out/hearth" "$out/hearth.gz"
mkdir -p "$out/tests"
pack() { # pack SRC DEST.gz
  local tmp
  tmp="$(mktemp)"
  cp "$1" "$tmp"
  strip "$tmp" 2>/dev/null || true
  gzip -9 -c "$tmp" >"$2"
  rm -f "$tmp"
}
pack "$target/release/hearth" "$out/hearth.gz"
pack "$target/release/examples/matvec_bw" "$out/matvec_bw.gz"
python3 - "$tests_json" <<'PY' | while read -r name exe; do pack "$exe" "$out/tests/$name.gz"; done
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        if m["target"]["name"] in ("kernels", "half_precision"):
            print(m["target"]["name"], m["executable"])
PY
for t in kernels half_precision; do
  [ -s "$out/tests/$t.gz" ] || { echo "error: test binary $t was not built" >&2; exit 1; }
done
cp scripts/gpu-check.sh scripts/fixture_compare.py "$out/"

fixtures="${HEARTH_FIXTURES:-$(cd .. && pwd)/shared/fixtures}"
if [ -d "$fixtures/models" ]; then
  rm -rf "$out/fixtures"
  mkdir -p "$out/fixtures"
  cp -r "$fixtures/models" "$out/fixtures/models"
else
  echo "warning: fixtures not found at $fixtures; $out/fixtures not refreshed" >&2
fi
ls -la "$out" "$out/tests"
du -sh "$out"
