#!/usr/bin/env bash
# Fetches Fashion-MNIST (Xiao et al. 2017) for `hourglass train --preset fashion-mnist`: the 60,000 training and
# 10,000 test images of 28x28 grey pixels, as shipped by Debian's dataset-fashion-mnist package (installed here
# with apt-get when missing). Checks the package's .gz files against their sha256s, decompresses the two image
# files into data/fashion-mnist/ (git-ignored; never committed) and checks those too, then prints the directory
# last. The labels are not needed: the model learns the images alone. Idempotent: does nothing when the verified
# files are already there.
#
# Usage: tools/fetch-images.sh [DATA_DIR]    (default: data/ at the repository root)
# Needs: the package's files, or apt-get and root to install them (Debian 11+, Ubuntu 20.10+); sha256sum, gzip.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_DIR="${1:-$ROOT/data}"
OUT="$DATA_DIR/fashion-mnist"
PACKAGE=dataset-fashion-mnist
SOURCE=/usr/share/datasets/fashion-mnist

# name, sha256 of the package's .gz, sha256 of the decompressed file.
IMAGES=(
    "train-images-idx3-ubyte b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7 c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
    "t10k-images-idx3-ubyte cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa 5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
)

# Succeeds iff FILE exists and has sha256 SHA; otherwise says why on stderr (quiet with a third argument).
verify() {
    local file="$1" sha="$2" got
    if [[ ! -f "$file" ]]; then
        [[ $# -gt 2 ]] || echo "$file: missing" >&2
        return 1
    fi
    got="$(sha256sum "$file" | cut -d' ' -f1)"
    if [[ "$got" != "$sha" ]]; then
        [[ $# -gt 2 ]] || echo "$file: sha256 $got, expected $sha" >&2
        return 1
    fi
}

all_present=1
for entry in "${IMAGES[@]}"; do
    read -r name _ sha <<<"$entry"
    verify "$OUT/$name" "$sha" quiet || all_present=0
done
if [[ $all_present -eq 1 ]]; then
    echo "Fashion-MNIST images already present and verified" >&2
    echo "$OUT"
    exit 0
fi

if [[ ! -f "$SOURCE/train-images-idx3-ubyte.gz" || ! -f "$SOURCE/t10k-images-idx3-ubyte.gz" ]]; then
    if ! command -v apt-get >/dev/null; then
        echo "error: $SOURCE does not hold the Fashion-MNIST images, and there is no apt-get to install the" \
            "Debian package $PACKAGE that puts them there; elsewhere, put Fashion-MNIST's" \
            "train-images-idx3-ubyte.gz and t10k-images-idx3-ubyte.gz (github.com/zalandoresearch/fashion-mnist)" \
            "in $SOURCE" >&2
        exit 1
    fi
    if [[ "$(id -u)" -ne 0 ]]; then
        echo "error: $SOURCE does not hold the Fashion-MNIST images, and installing the Debian package" \
            "$PACKAGE needs root: run \`sudo apt-get install -y $PACKAGE\`, then this script again" >&2
        exit 1
    fi
    echo "installing the Debian package $PACKAGE ..." >&2
    # A fresh machine's package lists may not know the package yet: update them once and try again.
    if ! apt-get install -y "$PACKAGE" >&2; then
        apt-get update >&2
        apt-get install -y "$PACKAGE" >&2 || {
            echo "error: apt-get could not install $PACKAGE (see above)" >&2
            exit 1
        }
    fi
fi

mkdir -p "$OUT"
for entry in "${IMAGES[@]}"; do
    read -r name gz_sha sha <<<"$entry"
    if verify "$OUT/$name" "$sha" quiet; then
        continue
    fi
    if ! verify "$SOURCE/$name.gz" "$gz_sha"; then
        echo "error: $SOURCE/$name.gz is not the file this script knows (see above); nothing written" >&2
        exit 1
    fi
    echo "decompressing $SOURCE/$name.gz ..." >&2
    gzip -dc "$SOURCE/$name.gz" >"$OUT/$name.tmp"
    if ! verify "$OUT/$name.tmp" "$sha"; then
        rm -f "$OUT/$name.tmp"
        echo "error: the decompressed $name does not verify (see above); nothing written" >&2
        exit 1
    fi
    mv "$OUT/$name.tmp" "$OUT/$name"
    echo "wrote $OUT/$name (sha256 verified)" >&2
done
echo "$OUT"
