#!/usr/bin/env bash
# Builds kernbin's Level Zero CPU test driver and prints the path of the shared library.
#   ZE_ENABLE_ALT_DRIVERS=$(tools/ze_cpu_driver/build.sh) kernbin devices
# Needs gcc and the headers of Debian/Ubuntu libze-dev and opencl-c-headers; at run time the
# Level Zero loader (libze1), an OpenCL ICD loader (ocl-icd-libopencl1) and an OpenCL CPU
# runtime with SPIR-V and unified shared memory (PyPI intel-opencl-rt; kernbin points the ICD
# loader at it). Output: build/ze_cpu_driver/libze_kernbin_cpu.so (or $1), rebuilt when the source changes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/../../build/ze_cpu_driver/libze_kernbin_cpu.so}"
mkdir -p "$(dirname "$out")"
if [ ! -f "$out" ] || [ "$here/ze_cpu_driver.c" -nt "$out" ]; then
    gcc -std=c11 -O2 -g -Wall -Wextra -Werror -fPIC -shared -fvisibility=hidden \
        -o "$out.tmp" "$here/ze_cpu_driver.c" -ldl -lpthread
    mv "$out.tmp" "$out"
fi
echo "$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
