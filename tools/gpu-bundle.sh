#!/usr/bin/env bash
# Builds, here (Rust, no GPU), the release test binaries, the `hourglass` CLI and (--benches) the bench
# binaries, and packs them into .gpu/ for a GPU machine that has no Rust. There, from the project root:
#   bash tools/gpu-validate.sh [--no-bench | --tests-only [FILTER...] | --benches-only]
# (it sources tools/gpu-env.sh, the committed runner logic; nothing executable but the binaries is generated).
#
#   tools/gpu-bundle.sh [--benches] [extra cargo args...]
#
# Extra args go to `cargo test --release --no-run`; without them, the test suite (tests/suite/: one binary,
# every test, well under the 64 MiB a device call carries; gpu-validate.sh runs its GPU areas). The benches are
# always all of them. Layout:
#   .gpu/bundle.tgz   tests/* (test binaries), benches/* (bench binaries), bin/hourglass (the CLI), packed
#                     (tools/gpu-env.sh unpacks them into .gpu/ there)
#   .gpu/build-root   CARGO_MANIFEST_DIR at build time: tests read fixtures through env!("CARGO_MANIFEST_DIR")
#                     paths, so the runner links that path to wherever the bundle runs
#   .gpu/cli-path     env!("CARGO_BIN_EXE_hourglass") at build time: CLI tests run that path, so the runner
#                     puts the bundled CLI there
#   .gpu/commit       the commit built, "-dirty" when the tree had changes
set -euo pipefail
cd "$(dirname "$0")/.."

benches=0
if [ "${1:-}" = "--benches" ]; then benches=1; shift; fi

# .gpu must stay out of git (the device tool then carries it only when named in `carry`).
git check-ignore -q .gpu || { echo "gpu-bundle: .gpu is not ignored by git; add /.gpu to .gitignore" >&2; exit 1; }

# Prints the executables of cargo's JSON messages on stdin: test harnesses (tests), bench targets (benches),
# or the `hourglass` bin (bin). Examples are built by `cargo test` too but are neither.
exes() {
  python3 -c '
import json, sys
want = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    exe = m.get("executable")
    if m.get("reason") != "compiler-artifact" or not exe:
        continue
    kinds, test = m["target"]["kind"], m["profile"]["test"]
    if (want == "tests" and test and "bench" not in kinds) or (want == "benches" and "bench" in kinds) \
            or (want == "bin" and "bin" in kinds and not test and m["target"]["name"] == "hourglass"):
        print(exe)
' "$1" | sort -u
}

rm -rf .gpu
mkdir -p .gpu/tests .gpu/benches .gpu/bin
list=$(mktemp)
trap 'rm -f "$list"' EXIT

# json-render-diagnostics: JSON artifacts on stdout, compiler warnings and errors still readable on stderr.
# Without arguments: the suite (tests/fuzz_loaders.rs holds nothing to a GPU).
[ $# -gt 0 ] || set -- --test suite
cargo test --release --no-run --message-format=json-render-diagnostics "$@" | exes tests > "$list"
[ -s "$list" ] || { echo "gpu-bundle: cargo built no test binaries" >&2; exit 1; }
xargs -r -d '\n' cp -t .gpu/tests/ < "$list"
if [ "$benches" = 1 ]; then
  cargo bench --no-run --message-format=json-render-diagnostics | exes benches > "$list"
  xargs -r -d '\n' cp -t .gpu/benches/ < "$list"
fi
# After the tests, so the CLI bundled is the one target/release holds now (the one their CARGO_BIN_EXE names).
cargo build --release --bin hourglass --message-format=json-render-diagnostics | exes bin > "$list"
[ "$(wc -l < "$list")" = 1 ] || { echo "gpu-bundle: expected one hourglass binary, got: $(cat "$list")" >&2; exit 1; }
cp "$(cat "$list")" .gpu/bin/hourglass
cat "$list" > .gpu/cli-path

manifest=$(cargo locate-project --message-format plain)
dirname "$manifest" > .gpu/build-root
commit=$(git rev-parse --short HEAD)
[ -z "$(git status --porcelain --untracked-files=no)" ] || commit="$commit-dirty"
echo "$commit" > .gpu/commit
case "$commit" in *-dirty) echo "gpu-bundle: WARNING: built from a tree with uncommitted changes ($commit)" >&2 ;; esac

# Debug symbols are dead weight on the GPU machine; a device call carries at most 64 MiB in all.
if command -v strip > /dev/null; then
  find .gpu/tests .gpu/benches .gpu/bin -type f -exec strip --strip-debug {} +
else
  echo "gpu-bundle: WARNING: no strip here; the binaries keep their debug symbols" >&2
fi

# Packed: the binaries compress about 3x, and a device call carries at most 64 MiB; tools/gpu-env.sh unpacks.
counts="tests: $(find .gpu/tests -type f | wc -l), benches: $(find .gpu/benches -type f | wc -l), bin: hourglass"
tar -czf .gpu/bundle.tgz -C .gpu tests benches bin
rm -rf .gpu/tests .gpu/benches .gpu/bin
size=$(du -sm .gpu | cut -f1)
echo "bundle .gpu: ${size} MiB packed, commit $commit; $counts"
if [ "$size" -gt 56 ]; then
  echo "gpu-bundle: WARNING: .gpu is over 56 MiB, near the 64 MiB a device call carries;" \
       "bundle without the benches" >&2
fi
