#!/usr/bin/env bash
# Rebuilds the committed sample SPIR-V from the OpenCL C sources beside it.
# Needs Debian/Ubuntu clang-15, llvm-spirv-15 and spirv-tools:
#   apt-get install clang-15 llvm-spirv-15 spirv-tools
set -euo pipefail
cd "$(dirname "$0")/../kernbin/samples"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for src in *.cl; do
    name=${src%.cl}
    clang-15 -cl-std=CL1.2 -target spir64 -O2 -emit-llvm -c -Xclang -finclude-default-header \
        -o "$tmp/$name.bc" "$src"
    llvm-spirv-15 "$tmp/$name.bc" -o "$name.spv"
    spirv-val "$name.spv"
    echo "$name.spv: $(stat -c %s "$name.spv") bytes"
done
