#!/usr/bin/env bash
# Rebuilds the committed sample PTX (kernbin/samples/<name>.ptx) from the CUDA C sources
# beside it (<name>.cu, the CUDA twins of the OpenCL samples <name>.cl), for compute_80:
# PTX for a virtual architecture is JIT-compiled by the driver on that GPU and every later one.
#
#   tools/make_cuda_samples.sh [OUTDIR]     (default: kernbin/samples)
#
# The committed PTX was made with:
# nvcc: Cuda compilation tools, release 13.0, V13.0.88
# Another nvcc writes other PTX (its version is in the PTX's header comment, and code
# generation changes between releases); tests/test_samples_cuda.py compares the committed
# files against this script's output only when the nvcc on PATH is that version.
#
# Deterministic: the same nvcc writes the same bytes. nvcc is run inside the samples
# folder on the bare file name and without -G/-lineinfo, so no path of this machine ends
# up in the PTX; that is checked below before a file is put in place.
set -euo pipefail
here=$(cd "$(dirname "$0")/../kernbin/samples" && pwd)
out=${1:-$here}
mkdir -p "$out"
out=$(cd "$out" && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cd "$here"
for src in *.cu; do
    name=${src%.cu}
    nvcc --ptx -arch=compute_80 -o "$tmp/$name.ptx" "$src"
    if grep -nE '/(tmp|work|root|home|usr|opt|var|Users)\b' "$tmp/$name.ptx"; then
        echo "$name.ptx: holds an absolute path of this machine (above); not written" >&2
        exit 1
    fi
    mv "$tmp/$name.ptx" "$out/$name.ptx"
    echo "$name.ptx: $(stat -c %s "$out/$name.ptx") bytes"
done
