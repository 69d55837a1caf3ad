#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine for kernbin: the system packages the tests use
# (installed with apt when missing), then a virtual environment in .venv with kernbin
# and its test, CPU-runtime and plot extras.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
# redis-server, nginx: cache tests (Redis and HTTP tiers); intel-opencl-icd: ocloc + libocloc.so (Intel GPU offline builds);
# libze1, libze-dev, opencl-c-headers, ocl-icd-libopencl1, gcc: the Level Zero loader and the CPU test driver
for pkg in redis-server nginx intel-opencl-icd libze1 libze-dev opencl-c-headers ocl-icd-libopencl1 gcc; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
        # the tests start their own nginx on a free loopback port: no system web server on port 80
        if [[ " ${need[*]} " == *" nginx "* ]] && command -v systemctl >/dev/null 2>&1; then
            $sudo systemctl disable --now nginx >/dev/null 2>&1 || true
        fi
    else
        echo "setup: please install ${need[*]} (the tests that need them will skip)" >&2
    fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
