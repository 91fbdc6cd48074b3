#!/usr/bin/env bash
# Fetches the default corpus: a 6,089,746-byte excerpt of an English Wikipedia dump in enwik8's own format
# (MediaWiki XML), shipped as test data in the gensim 4.4.0 wheel on PyPI. Writes data/enwik-excerpt.xml
# (git-ignored; the corpus is never committed), checks its size and sha256, and prints its path last.
# Idempotent: does nothing when the verified file is already there.
#
# Usage: tools/fetch-corpus.sh [DATA_DIR]    (default: data/ at the repository root)
# Needs: python3 with pip, and network access to PyPI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_DIR="${1:-$ROOT/data}"
OUT="$DATA_DIR/enwik-excerpt.xml"
SHA256=34c1c63050c87cc8477b9ae36b1cb0edf372612c92938b742e579a7109c20fa4
SIZE=6089746
WHEEL_PIN="gensim==4.4.0"
MEMBER="gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
PYTHON="${PYTHON:-python3}"

# Prints nothing and succeeds iff FILE has the expected size and sha256; otherwise says why on stderr.
verify() {
    "$PYTHON" - "$1" "$SIZE" "$SHA256" <<'EOF'
import hashlib, os, sys
path, size, sha = sys.argv[1], int(sys.argv[2]), sys.argv[3]
got_size = os.path.getsize(path)
if got_size != size:
    sys.exit(f"{path}: size {got_size} bytes, expected {size}")
h = hashlib.sha256()
with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
if h.hexdigest() != sha:
    sys.exit(f"{path}: sha256 {h.hexdigest()}, expected {sha}")
EOF
}

if [[ -f "$OUT" ]]; then
    if verify "$OUT"; then
        echo "corpus already present and verified" >&2
        echo "$OUT"
        exit 0
    fi
    echo "existing $OUT does not verify; fetching again" >&2
fi

mkdir -p "$DATA_DIR"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# Any one wheel of gensim 4.4.0 holds the same test data; naming a platform and Python version lets pip pick
# a binary wheel without building anything and without matching this machine.
echo "downloading $WHEEL_PIN (one wheel, no dependencies) ..." >&2
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp \
    --dest "$TMP" "$WHEEL_PIN" >&2

shopt -s nullglob
wheels=("$TMP"/gensim-4.4.0-*.whl)
if [[ ${#wheels[@]} -ne 1 ]]; then
    echo "error: expected one gensim 4.4.0 wheel in $TMP, found ${#wheels[@]}" >&2
    exit 1
fi

echo "extracting and decompressing $MEMBER ..." >&2
"$PYTHON" - "${wheels[0]}" "$MEMBER" "$TMP/corpus.xml" <<'EOF'
import bz2, shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    if member not in z.namelist():
        sys.exit(f"error: {wheel} has no {member}")
    with z.open(member) as src, bz2.open(src) as xml, open(dest, "wb") as out:
        shutil.copyfileobj(xml, out, 1 << 20)
EOF

if ! verify "$TMP/corpus.xml"; then
    echo "error: the extracted corpus does not verify (see above); nothing written to $OUT" >&2
    exit 1
fi
mv "$TMP/corpus.xml" "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "wrote $OUT ($SIZE bytes, sha256 verified)" >&2
echo "$OUT"
