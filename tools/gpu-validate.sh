#!/usr/bin/env bash
# Whole GPU validation in one call, on a GPU machine without Rust (see docs/gpu-validation.md, docs/perf.md):
#   here  (Rust, no GPU):  tools/gpu-bundle.sh --benches
#   there (GPU, no Rust):  bash tools/gpu-validate.sh [--stages LIST | --tests-only [FILTER...] | --no-bench |
#                                                      --benches-only]
#                          from the project root, carrying .gpu (and data/ for the real training corpus)
# tools/gpu-env.sh sets up the environment (build-root link, bundled CLI, CUDA libraries without the toolkit's
# stubs/, HOURGLASS_REQUIRE_GPU=1). Stages, in this order, each in its own process under `timeout` with a
# budget (seconds; HG_BUDGET_<STAGE> overrides, e.g. HG_BUDGET_STEP=200), each writing under $OUT (default
# /tmp/hourglass-gpu-validate) as it goes, so a time-out loses only the stage it cut:
#   tests      60  the bundled test suite, one run per GPU area (gpu::ops, gpu::attention, ..., and errors::; up
#                  to HG_TEST_JOBS=4 at once), --include-ignored: tests/<area>.log, gpu-tests.log; --tests-only
#                  FILTER... runs the suite once with those filters instead
#   sanitizer  60  compute-sanitizer memcheck, then racecheck, on the op areas (gpu::ops, gpu::attention,
#                  gpu::lm_ops, gpu::train_ops, gpu::rotary), --test-threads 1, tests matching HG_SANITIZER_SKIP
#                  (default: long_sequences and the full bf16 attention sets, whose small subset runs) skipped;
#                  the budget shared out run by run: sanitizer/<tool>-<area>.log, sanitizer/runs.tsv, or
#                  sanitizer/skipped.txt when there is no compute-sanitizer
#   golden     50  `hourglass kernels --device cuda`: the kernels' load time from the cubins, and from the PTX
#                  on a cold and a warm JIT cache (kernel-load.log); `hourglass forward --device cuda` on every
#                  golden fixture against PyTorch's numbers (golden.log), and the demo (demo.log)
#   train      25  a short `hourglass train --device cuda` of the gpu preset (train.log, gpu-run/ without its
#                  checkpoint)
#   rooflines  15  tools/bench_torch_kernels.py --only rooflines
#   kernels    30  our .gpu/benches/gpu-* bench, then tools/bench_torch_kernels.py --only kernels
#   step      150  our .gpu/benches/train-* bench (gpu), then tools/bench_torch_step.py --config enwik8 (every
#                  mode, in the time left)
#   sample     20  our .gpu/benches/sample-* bench (gpu): generation bytes/s, decoding vs recomputing
#   report      5  tools/perf_report.py results.jsonl --sanitizer sanitizer/: writes docs/perf.md and
#                  docs/gpu-validation.md here, copied to $OUT
# (415 s in all.) Benchmarks append JSON lines to $OUT/results.jsonl (ours through HOURGLASS_BENCH_JSON).
# summary.log lists every result and each stage's time used against its budget. Exits 1 when anything failed.
# Aliases: --tests-only [FILTER...] = --stages tests; --no-bench = tests,sanitizer,golden,train,report;
# --benches-only = rooflines,kernels,step,sample,report.
# HG_STEP_MODES / HG_STEP_ARGS: the modes / more flags of bench_torch_step.py. Without a GPU (testing this
# script): HG_TORCH_DEVICE=cpu HG_TINY=1 runs the PyTorch stages on tiny shapes on the CPU; HG_PERF_MD and
# HG_VALIDATION_MD redirect the report. HOURGLASS_PYTHON picks the Python (default python3).
# The stages are called by name ("stage_$stage"), which shellcheck cannot follow:
# shellcheck disable=SC2317
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
self=tools/gpu-validate.sh
out=${OUT:-/tmp/hourglass-gpu-validate}
export OUT=$out
mkdir -p "$out" || exit 1
py=${HOURGLASS_PYTHON:-python3}
# Where the report stage writes (HG_PERF_MD / HG_VALIDATION_MD: elsewhere, e.g. when testing this script).
perf_md=${HG_PERF_MD:-docs/perf.md}
validation_md=${HG_VALIDATION_MD:-docs/gpu-validation.md}
hg=.gpu/bin/hourglass
all_stages=(tests sanitizer golden train rooflines kernels step sample report)
declare -A default_budget=([tests]=60 [sanitizer]=60 [golden]=50 [train]=25 [rooflines]=15 [kernels]=30
                           [step]=150 [sample]=20 [report]=5)

usage() {
  echo "usage: bash tools/gpu-validate.sh [--stages $(IFS=,; echo "${all_stages[*]}") | --tests-only [FILTER...] |" \
       "--no-bench | --benches-only]"
}

# budget STAGE: its time limit in seconds.
budget() {
  local var="HG_BUDGET_${1^^}"
  echo "${!var:-${default_budget[$1]}}"
}

status=0
# result WHAT RC: records one result in summary.log (and on stdout), and in the exit status.
result() {
  local word=ok
  [ "$2" = 0 ] || { word="FAILED (rc=$2)"; status=1; }
  echo "$1: $word" | tee -a "$out/summary.log"
}
# note WHAT: a line in summary.log that is neither a pass nor a failure.
note() {
  echo "$1" | tee -a "$out/summary.log"
}
# left: seconds left of this stage's budget (HG_STAGE_BUDGET, from HG_STAGE_START), less a margin so that our
# own time limits fire before the stage's.
left() {
  echo $(( HG_STAGE_BUDGET - (SECONDS - HG_STAGE_START) - 3 ))
}
# limit [PERCENT]: a time limit for `timeout` (that percentage of what is left; at least 1 s: `timeout 0` would
# never fire).
limit() {
  local l=$(( $(left) * ${1:-100} / 100 ))
  [ "$l" -ge 1 ] || l=1
  echo "$l"
}
need_bundle() {
  if [ -n "${HG_NO_BUNDLE:-}" ]; then
    result "$1 (no usable .gpu bundle: $HG_NO_BUNDLE)" 1
    return 1
  fi
}

# ---------------------------------------------------------------------------------------------------------------

# The GPU areas of the test suite (tests/suite/gpu/), one run of the suite binary each, and errors:: for its
# CLI-on-CUDA test.
gpu_areas=(gpu::ops gpu::attention gpu::model gpu::lm_ops gpu::train_ops gpu::train_loop gpu::rotary gpu::bf16
           gpu::cli errors)
# The op areas compute-sanitizer checks.
sanitized_areas=(gpu::ops gpu::attention gpu::lm_ops gpu::train_ops gpu::rotary)
# suite_binary: the bundled test suite (tests/suite/main.rs).
suite_binary() {
  local t
  for t in .gpu/tests/suite-*; do [ -x "$t" ] && { echo "$t"; return 0; }; done
  return 1
}
# log_name AREA: a file name for an area's log (gpu::ops -> gpu-ops).
log_name() { echo "${1//::/-}"; }

stage_tests() {
  need_bundle tests || return 1
  mkdir -p "$out/tests"
  local suite area name jobs=${HG_TEST_JOBS:-4} areas=()
  suite=$(suite_binary) || { result "tests (no suite binary bundled)" 1; return 1; }
  # FILTERs given: one run with them (libtest ORs its filters, so they cannot narrow an area); else each area.
  local given=(${filters[@]+"${filters[@]}"})
  if [ "${#given[@]}" -gt 0 ]; then areas=("filtered"); else areas=("${gpu_areas[@]}"); fi
  for area in "${areas[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
    name=$(log_name "$area")
    (
      if [ "$area" = filtered ]; then set -- "${given[@]}"; else set -- "$area::"; fi
      timeout -k 5 "$(limit)" "$suite" --include-ignored --nocapture --test-threads 4 "$@" \
        > "$out/tests/$name.log" 2>&1
      rc=$?
      printf '%-32s rc=%s  %s\n' "$name" "$rc" "$(grep -E '^test result:' "$out/tests/$name.log" | tail -1)"
      if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        echo "(cut off by the stage's time limit)" >> "$out/tests/$name.log"
        result "test $name (cut off by the stage's time limit)" "$rc" > /dev/null
      else
        result "test $name" "$rc" > /dev/null
      fi
      exit "$rc"
    ) &
  done
  wait
  for area in "${areas[@]}"; do
    name=$(log_name "$area")
    [ -f "$out/tests/$name.log" ] && { echo "=== $name"; cat "$out/tests/$name.log"; }
  done > "$out/gpu-tests.log"
  grep -hE "worst|rel err" "$out/gpu-tests.log" | head -40
  # Each area recorded its own result; any failure fails the stage.
  ! grep -q "^test .*: FAILED" "$out/summary.log"
}

# find_sanitizer: the compute-sanitizer executable, from PATH, the CUDA installs, the project's toolchain or the
# pip `nvidia` packages.
find_sanitizer() {
  local c d
  c=$(command -v compute-sanitizer 2> /dev/null) && { echo "$c"; return 0; }
  for c in /usr/local/cuda*/bin/compute-sanitizer /usr/local/cuda*/compute-sanitizer/compute-sanitizer \
      /opt/nvidia/*/compute-sanitizer/compute-sanitizer /usr/bin/compute-sanitizer; do
    [ -x "$c" ] && { echo "$c"; return 0; }
  done
  for d in .toolchain $("$py" -c 'import nvidia, sys; print("\n".join(nvidia.__path__))' 2> /dev/null); do
    [ -d "$d" ] || continue
    c=$(find "$d" -name compute-sanitizer -type f -perm -u+x 2> /dev/null | head -1)
    [ -n "$c" ] && { echo "$c"; return 0; }
  done
  return 1
}

stage_sanitizer() {
  local dir="$out/sanitizer" cs n area tool per rc i=0 t0 runs=() skip=()
  mkdir -p "$dir"
  rm -f "$dir"/*.log "$dir/skipped.txt"
  : > "$dir/runs.tsv"
  need_bundle sanitizer || { echo "not run: no usable .gpu bundle" > "$dir/skipped.txt"; return 1; }
  if ! cs=$(find_sanitizer); then
    echo "skipped: no compute-sanitizer (searched PATH, /usr/local/cuda*, .toolchain, the pip nvidia packages)" \
      > "$dir/skipped.txt"
    note "sanitizer: skipped: no compute-sanitizer"
    return 0
  fi
  note "sanitizer: $cs ($("$cs" --version 2> /dev/null | grep -iE 'version' | head -1))"
  local suite
  suite=$(suite_binary) || { result "sanitizer (no suite binary bundled)" 1; return 1; }
  for tool in memcheck racecheck; do
    for n in "${sanitized_areas[@]}"; do runs+=("$tool $n"); done
  done
  IFS=, read -r -a skip <<< "${HG_SANITIZER_SKIP-long_sequences,enwik8_shape,bf16_tensor_core_attention_matches}"
  local skips=()
  for n in "${skip[@]}"; do [ -n "$n" ] && skips+=(--skip "$n"); done
  local bad=0
  for run in "${runs[@]}"; do
    tool=${run%% *}
    area=${run#* }
    n=$(log_name "$area")
    # Share what is left equally among the runs still to go (a quick run leaves more to the next), but give
    # each at least 15 s while there is that much: memcheck first, racecheck with what remains.
    per=$(( $(left) / (${#runs[@]} - i) ))
    [ "$per" -ge 15 ] || per=$(( $(left) < 15 ? $(left) : 15 ))
    i=$((i + 1))
    if [ "$per" -lt 5 ]; then
      printf '%s\t%s\t%s\t%s\t%s\n' "$tool" "$n" "not run" 0 "$per" >> "$dir/runs.tsv"
      note "sanitizer $tool $n: not run (no time left)"
      continue
    fi
    t0=$SECONDS
    timeout -k 5 "$per" "$cs" --tool "$tool" --error-exitcode 86 "$suite" --include-ignored --test-threads 1 \
      "$area::" ${skips[@]+"${skips[@]}"} > "$dir/$tool-$n.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\t%s\t%s\n' "$tool" "$n" "$rc" "$((SECONDS - t0))" "$per" >> "$dir/runs.tsv"
    case "$rc" in
      0) result "sanitizer $tool $n" 0 ;;
      124 | 137)
        note "sanitizer $tool $n: cut off after $per s ($(grep -cE '(\.\.\. |^)ok$' "$dir/$tool-$n.log") tests ok)" ;;
      86)
        result "sanitizer $tool $n (reported: $(grep -m1 -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$dir/$tool-$n.log"))" 86
        bad=1 ;;
      *) result "sanitizer $tool $n" "$rc"; bad=1 ;;
    esac
  done
  return "$bad"
}

stage_golden() {
  need_bundle golden || return 1
  local case name rc bad=0
  # Cuda::new: the embedded cubins, then the PTX JIT-compiled on a cold and a warm driver cache.
  local jit_cache
  jit_cache=$(mktemp -d)
  { "$hg" kernels --device cuda | head -1
    CUDA_CACHE_PATH=$jit_cache HOURGLASS_KERNELS=ptx "$hg" kernels --device cuda | head -1
    CUDA_CACHE_PATH=$jit_cache HOURGLASS_KERNELS=ptx "$hg" kernels --device cuda | head -1
  } 2>&1 | tee "$out/kernel-load.log"
  rm -rf "$jit_cache"
  echo "=== hourglass forward --device cuda vs PyTorch fixtures" | tee "$out/golden.log"
  for case in tests/fixtures/golden/*/; do
    name=$(basename "$case")
    "$hg" forward --device cuda --config "$case/config.json" --weights "$case/weights.safetensors" \
      --input "$case/input.safetensors" --output "$out/cli-$name.safetensors" > "$out/one.log" 2>&1 \
      && "$py" tools/golden_check.py --rtol 1e-5 --atol 1e-6 "$out/cli-$name.safetensors" \
         "$case/expected.safetensors" >> "$out/one.log" 2>&1
    rc=$?
    { echo "--- $name rc=$rc"; cat "$out/one.log"; } >> "$out/golden.log"
    result "golden $name" "$rc"
    [ "$rc" = 0 ] || { cat "$out/one.log"; bad=1; }
    rm -f "$out/cli-$name.safetensors" "$out/one.log"
  done
  "$hg" demo --device cuda > "$out/demo.log" 2>&1
  rc=$?
  cat "$out/demo.log"
  result demo "$rc"
  [ "$rc" = 0 ] || bad=1
  return "$bad"
}

stage_train() {
  need_bundle train || return 1
  # The real corpus when data/ was carried, else README.md's text (kept out of $OUT so it does not travel back).
  # The run folder too stays out of $OUT (its checkpoint is ~230 MB); its small files are copied there.
  local data=data/enwik-excerpt.xml run="${TMPDIR:-/tmp}/hourglass-gpu-run" rc f
  if [ ! -f "$data" ]; then
    data="${TMPDIR:-/tmp}/hourglass-text.txt"
    for _ in $(seq 400); do cat README.md; done > "$data"
  fi
  rm -rf "$run"
  "$hg" train --device cuda --no-progress --data "$data" --out "$run" --steps 60 \
    --warmup-steps 10 --eval-every 20 --sample-length 200 > "$out/train.log" 2>&1
  rc=$?
  cat "$out/train.log"
  mkdir -p "$out/gpu-run"
  for f in config.json history.csv history.json curve.png; do [ -f "$run/$f" ] && cp "$run/$f" "$out/gpu-run/"; done
  result "train ($data)" "$rc"
  return "$rc"
}

torch_device() { echo "${HG_TORCH_DEVICE:-cuda}"; }
tiny_flag() { [ -n "${HG_TINY:-}" ] && echo --tiny; }

stage_rooflines() {
  local rc
  # shellcheck disable=SC2046
  PYTHONUNBUFFERED=1 timeout -k 5 "$(limit)" "$py" tools/bench_torch_kernels.py --only rooflines \
    --device "$(torch_device)" $(tiny_flag) --json "$out/results.jsonl" 2>&1 | tee "$out/rooflines.log"
  rc=${PIPESTATUS[0]}
  result "rooflines (bench_torch_kernels.py)" "$rc"
  return "$rc"
}

# ours BENCH-GLOB LOG LIMIT [ARGS...]: our bundled bench binaries, JSON lines to results.jsonl.
ours() {
  local glob=$1 log=$2 limit=$3 b rc bad=0 ran=0
  shift 3
  : > "$out/$log"
  if [ -n "${HG_NO_BUNDLE:-}" ]; then
    result "bench $glob (no usable .gpu bundle: $HG_NO_BUNDLE)" 1
    return 1
  fi
  for b in .gpu/benches/$glob; do
    [ -x "$b" ] || continue
    ran=1
    HOURGLASS_BENCH_JSON="$out/results.jsonl" timeout -k 5 "$limit" "$b" --bench "$@" 2>&1 | tee -a "$out/$log"
    rc=${PIPESTATUS[0]}
    result "bench $(basename "$b")" "$rc"
    [ "$rc" = 0 ] || bad=1
  done
  [ "$ran" = 1 ] || { result "bench $glob (none bundled: run tools/gpu-bundle.sh --benches)" 1; bad=1; }
  return "$bad"
}

stage_kernels() {
  local bad=0 rc
  ours 'gpu-*' bench-gpu.log "$(limit 50)" || bad=1
  # shellcheck disable=SC2046
  PYTHONUNBUFFERED=1 timeout -k 5 "$(limit)" "$py" tools/bench_torch_kernels.py --only kernels \
    --device "$(torch_device)" $(tiny_flag) --json "$out/results.jsonl" 2>&1 | tee "$out/kernels.log"
  rc=${PIPESTATUS[0]}
  result "kernels (bench_torch_kernels.py)" "$rc"
  [ "$rc" = 0 ] || bad=1
  return "$bad"
}

stage_step() {
  local bad=0 rc config=enwik8 modes=() step_args=()
  ours 'train-*' bench-train.log "$(limit 35)" gpu || bad=1
  [ -n "${HG_TINY:-}" ] && config=tiny
  [ -n "${HG_STEP_MODES:-}" ] && modes=(--modes "$HG_STEP_MODES")
  # HG_STEP_ARGS: more flags for bench_torch_step.py, e.g. "--compile-scope model --mode-timeout 200".
  read -r -a step_args <<< "${HG_STEP_ARGS:-}"
  # bench_torch_step.py shares the time left among its modes (each in its own process) and records the ones it
  # had no time for as skipped.
  PYTHONUNBUFFERED=1 "$py" tools/bench_torch_step.py --config "$config" --device "$(torch_device)" \
    --budget "$(limit)" --json "$out/results.jsonl" ${modes[@]+"${modes[@]}"} ${step_args[@]+"${step_args[@]}"} 2>&1 \
    | tee "$out/step.log"
  rc=${PIPESTATUS[0]}
  result "step (bench_torch_step.py)" "$rc"
  [ "$rc" = 0 ] || bad=1
  return "$bad"
}

stage_sample() {
  ours 'sample-*' bench-sample.log "$(limit)" gpu
}

stage_report() {
  local args=() rc
  [ -s "$out/results.jsonl" ] && args+=("$out/results.jsonl")
  [ -d "$out/sanitizer" ] && args+=(--sanitizer "$out/sanitizer")
  # Without result lines the sanitizer table takes the device's name from the driver.
  [ -s "$out/results.jsonl" ] || args+=(--device "$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null \
    | head -1 || true)")
  if [ "${#args[@]}" = 0 ]; then
    note "report: nothing to report (no results.jsonl, no sanitizer logs)"
    return 0
  fi
  "$py" tools/perf_report.py "${args[@]}" --perf "$perf_md" --validation "$validation_md" 2>&1 \
    | tee "$out/report.log"
  rc=${PIPESTATUS[0]}
  cp "$perf_md" "$validation_md" "$out/" 2> /dev/null
  result "report (docs/perf.md, docs/gpu-validation.md, copied to \$OUT)" "$rc"
  return "$rc"
}

# ---------------------------------------------------------------------------------------------------------------

# Inside one stage (the parent runs `timeout BUDGET bash tools/gpu-validate.sh --run-stage NAME [-- FILTER...]`).
if [ "${1:-}" = "--run-stage" ]; then
  stage=$2
  shift 2
  [ "${1:-}" = "--" ] && shift
  filters=("$@")
  HG_STAGE_START=$SECONDS
  "stage_$stage"
  rc=$?
  [ "$status" = 0 ] || rc=1
  exit "$rc"
fi

stages=""
filters=()
while [ $# -gt 0 ]; do
  case "$1" in
    --stages) [ $# -ge 2 ] || { usage >&2; exit 2; }; stages=$2; shift 2 ;;
    --stages=*) stages=${1#*=}; shift ;;
    --tests-only) stages=tests; shift; filters=("$@"); break ;;
    --no-bench) stages=tests,sanitizer,golden,train,report; shift ;;
    --benches-only) stages=rooflines,kernels,step,sample,report; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
selected=()
if [ -z "$stages" ]; then
  selected=("${all_stages[@]}")
else
  IFS=, read -r -a want <<< "$stages"
  for s in "${all_stages[@]}"; do
    case ",$stages," in *",$s,"*) selected+=("$s") ;; esac
  done
  for s in "${want[@]}"; do
    case " ${all_stages[*]} " in *" $s "*) ;; *) echo "gpu-validate: unknown stage '$s'" >&2; usage >&2; exit 2 ;; esac
  done
fi

: > "$out/summary.log"
note "gpu-validate: stages ${selected[*]}; \$OUT=$out; $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
note "bundle: commit $(cat .gpu/commit 2> /dev/null || echo unknown)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -4 | tee -a "$out/summary.log"
# shellcheck source=tools/gpu-env.sh
if ! source tools/gpu-env.sh > "$out/gpu-env.log" 2>&1; then
  HG_NO_BUNDLE="tools/gpu-env.sh failed: $(tail -1 "$out/gpu-env.log")"
  export HG_NO_BUNDLE
  note "environment: $HG_NO_BUNDLE"
else
  cat "$out/gpu-env.log"
fi
"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tail -1 \
  | sed 's/^/python: /' | tee -a "$out/summary.log"

total=0
for s in "${selected[@]}"; do
  b=$(budget "$s")
  total=$((total + b))
  echo "=== stage $s (budget ${b} s)"
  t0=$SECONDS
  extra=()
  [ "$s" = tests ] && extra=(-- ${filters[@]+"${filters[@]}"})
  HG_STAGE_BUDGET=$b timeout -k 10 "$b" bash "$self" --run-stage "$s" ${extra[@]+"${extra[@]}"}
  rc=$?
  used=$((SECONDS - t0))
  case "$rc" in
    0) word=ok ;;
    124 | 137) word="TIMED OUT"; status=1 ;;
    *) word="FAILED (rc=$rc)"; status=1 ;;
  esac
  printf 'stage %-10s %-16s used %4d s of %4d s\n' "$s" "$word" "$used" "$b" | tee -a "$out/summary.log"
done
note "total: ${SECONDS} s (budgets ${total} s)"
echo "=== summary ($out/summary.log)"
cat "$out/summary.log"
exit "$status"
