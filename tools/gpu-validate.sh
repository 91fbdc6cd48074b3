#!/usr/bin/env bash
# Whole GPU validation in one call on a GPU machine without Rust (see docs/gpu-validation.md):
#   here:   ../shared/tools/gpu-bundle --benches && cargo build --release
#   there:  bash tools/gpu-validate.sh     (carrying .gpu and target/release/hourglass)
# 1. every bundled test binary with --include-ignored and HOURGLASS_REQUIRE_GPU=1 (log: $OUT/gpu-tests.log);
# 2. `hourglass forward --device cuda` on every golden fixture, checked against PyTorch's numbers; the demo; a
#    short `hourglass train --device cuda` of the gpu preset;
# 3. the benches, then the same models timed in PyTorch (skipped with --no-bench).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp}
status=0
# CUDA libraries for cudarc's dynamic loading. Not the toolkit's stubs/ folder: its libcuda.so is a stub that
# fails with CUDA_ERROR_STUB_LIBRARY (which is why this does not use .gpu/run's library path).
libs=$(find / -xdev \( -name 'libcublas.so*' -o -name 'libnvrtc.so*' \) -not -path '/proc/*' -not -path '*/stubs/*' \
       2>/dev/null | xargs -r -n1 dirname | sort -u | paste -sd: -)
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" HOURGLASS_REQUIRE_GPU=1
build_root=$(cat .gpu/build-root)
[ -e "$build_root" ] || { mkdir -p "$(dirname "$build_root")" && ln -s "$PWD" "$build_root"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
for t in .gpu/tests/*; do
  "$t" --include-ignored --nocapture --test-threads 4 > "$out/one.log" 2>&1; rc=$?
  { echo "=== $(basename "$t") rc=$rc"; cat "$out/one.log"; } >> "$out/gpu-tests.log"
  [ $rc -ne 0 ] && status=1
  printf '%-32s rc=%s  %s\n' "$(basename "$t")" "$rc" "$(grep -E '^test result:' "$out/one.log" | tail -1)"
done
grep -hE "worst|rel err" "$out/gpu-tests.log" | head -40
echo "=== hourglass forward --device cuda vs PyTorch fixtures"
for case in tests/fixtures/golden/*/; do
  target/release/hourglass forward --device cuda --config "$case/config.json" --weights "$case/weights.safetensors" \
    --input "$case/input.safetensors" --output "$out/cli-$(basename "$case").safetensors" \
    && python3 tools/golden_check.py --rtol 1e-5 --atol 1e-6 "$out/cli-$(basename "$case").safetensors" "$case/expected.safetensors" \
       > "$out/cli-check.log" 2>&1 && echo "$(basename "$case"): ok ($(grep -c . "$out/cli-check.log") lines checked)" \
    || { echo "$(basename "$case"): FAILED"; cat "$out/cli-check.log"; status=1; }
  rm -f "$out/cli-$(basename "$case").safetensors"
done
target/release/hourglass demo --device cuda || status=1
# A short run of the GPU preset through the CLI (carry data/ for the real corpus; else this file's own text).
data=data/enwik-excerpt.xml; [ -f "$data" ] || { data="$out/text.txt"; for i in $(seq 400); do cat README.md; done > "$data"; }
target/release/hourglass train --device cuda --no-progress --data "$data" --out "$out/gpu-run" --steps 60 \
  --warmup-steps 10 --eval-every 20 --sample-length 200 || status=1
[ "${1:-}" = "--no-bench" ] && exit $status
for b in .gpu/benches/cpu_model-* .gpu/benches/gpu-* .gpu/benches/train-*; do "$b" --bench 2>&1 | tee -a "$out/bench.log" || status=1; done
PYTHONUNBUFFERED=1 python3 tools/bench_torch.py 2>&1 | tee "$out/torch.log" || status=1
exit $status
