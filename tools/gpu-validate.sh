#!/usr/bin/env bash
# Whole GPU validation in one call, on a GPU machine without Rust (see docs/gpu-validation.md):
#   here  (Rust, no GPU):  tools/gpu-bundle.sh --benches
#   there (GPU, no Rust):  bash tools/gpu-validate.sh [--no-bench | --tests-only [FILTER...] | --benches-only]
#                          from the project root, carrying .gpu (and data/ for the real training corpus)
# tools/gpu-env.sh sets up the environment (build-root link, bundled CLI, CUDA libraries without the toolkit's
# stubs/, HOURGLASS_REQUIRE_GPU=1). Stages, each appending to its log under $OUT (default /tmp) as it runs:
# 1. every bundled test binary with --include-ignored (gpu-tests.log); --tests-only passes FILTERs to them
#    and stops here;
# 2. `hourglass forward --device cuda` on every golden fixture, checked against PyTorch's numbers
#    (golden.log); the demo (demo.log); a short `hourglass train --device cuda` of the gpu preset (train.log);
# 3. the benches (bench.log), then the same models timed in PyTorch (torch.log); skipped with --no-bench,
#    alone with --benches-only.
# Exits 1 when any stage failed; summary.log lists each stage's result.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${OUT:-/tmp}
mkdir -p "$out"
mode=all
filters=()
case "${1:-}" in
  "") ;;
  --no-bench) mode=no-bench ;;
  --benches-only) mode=benches ;;
  --tests-only) mode=tests; shift; filters=("$@") ;;
  *) echo "usage: bash tools/gpu-validate.sh [--no-bench | --tests-only [FILTER...] | --benches-only]" >&2; exit 2 ;;
esac
# shellcheck source=tools/gpu-env.sh
source tools/gpu-env.sh || exit 1
hg=.gpu/bin/hourglass
status=0
: > "$out/summary.log"
# result STAGE RC: records a stage's result in summary.log (and on stdout), and in the exit status.
result() {
  local word=ok
  [ "$2" = 0 ] || { word="FAILED (rc=$2)"; status=1; }
  echo "$1: $word" | tee -a "$out/summary.log"
}
echo "bundle: commit $(cat .gpu/commit 2> /dev/null || echo unknown)" | tee -a "$out/summary.log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$out/summary.log"

if [ "$mode" = all ] || [ "$mode" = no-bench ] || [ "$mode" = tests ]; then
  : > "$out/gpu-tests.log"
  for t in .gpu/tests/*; do
    [ -x "$t" ] || continue
    "$t" --include-ignored --nocapture --test-threads 4 ${filters[@]+"${filters[@]}"} > "$out/one.log" 2>&1; rc=$?
    { echo "=== $(basename "$t") rc=$rc"; cat "$out/one.log"; } >> "$out/gpu-tests.log"
    printf '%-32s rc=%s  %s\n' "$(basename "$t")" "$rc" "$(grep -E '^test result:' "$out/one.log" | tail -1)"
    result "test $(basename "$t")" "$rc" > /dev/null
  done
  rm -f "$out/one.log"
  grep -hE "worst|rel err" "$out/gpu-tests.log" | head -40
  [ "$mode" = tests ] && exit "$status"
fi

if [ "$mode" = all ] || [ "$mode" = no-bench ]; then
  echo "=== hourglass forward --device cuda vs PyTorch fixtures" | tee "$out/golden.log"
  for case in tests/fixtures/golden/*/; do
    name=$(basename "$case")
    "$hg" forward --device cuda --config "$case/config.json" --weights "$case/weights.safetensors" \
      --input "$case/input.safetensors" --output "$out/cli-$name.safetensors" > "$out/one.log" 2>&1 \
      && python3 tools/golden_check.py --rtol 1e-5 --atol 1e-6 "$out/cli-$name.safetensors" \
         "$case/expected.safetensors" >> "$out/one.log" 2>&1; rc=$?
    { echo "--- $name rc=$rc"; cat "$out/one.log"; } >> "$out/golden.log"
    result "golden $name" "$rc"
    [ "$rc" = 0 ] || cat "$out/one.log"
    rm -f "$out/cli-$name.safetensors" "$out/one.log"
  done

  : > "$out/demo.log"
  "$hg" demo --device cuda 2>&1 | tee -a "$out/demo.log"
  result demo $?

  # A short run of the GPU preset through the CLI (carry data/ for the real corpus; else README.md's text, kept
  # out of $OUT so it does not travel back).
  data=data/enwik-excerpt.xml
  [ -f "$data" ] || { data="${TMPDIR:-/tmp}/hourglass-text.txt"; for _ in $(seq 400); do cat README.md; done > "$data"; }
  : > "$out/train.log"
  "$hg" train --device cuda --no-progress --data "$data" --out "$out/gpu-run" --steps 60 \
    --warmup-steps 10 --eval-every 20 --sample-length 200 2>&1 | tee -a "$out/train.log"
  result "train ($data)" $?
fi

if [ "$mode" = all ] || [ "$mode" = benches ]; then
  : > "$out/bench.log"
  ran=0
  for b in .gpu/benches/cpu_model-* .gpu/benches/gpu-* .gpu/benches/train-*; do
    [ -x "$b" ] || continue
    ran=1
    "$b" --bench 2>&1 | tee -a "$out/bench.log"
    result "bench $(basename "$b")" $?
  done
  [ "$ran" = 1 ] || result "benches (none bundled: run tools/gpu-bundle.sh --benches)" 1
  : > "$out/torch.log"
  PYTHONUNBUFFERED=1 python3 tools/bench_torch.py 2>&1 | tee -a "$out/torch.log"
  result "bench_torch.py" $?
fi
echo "=== summary ($out/summary.log)"
cat "$out/summary.log"
exit "$status"
