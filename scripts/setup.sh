#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine for kernbin: the system packages the tests use
# (redis-server, intel-opencl-icd; installed with apt when missing), then a virtual environment in .venv with kernbin
# and its test, CPU-runtime and plot extras.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)     # cache tests (Redis tier)
command -v ocloc >/dev/null 2>&1 || need+=(intel-opencl-icd)         # ocloc + libocloc.so (Intel GPU offline builds)
if [ ${#need[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
        echo "setup: please install ${need[*]} (the tests that need them will skip)" >&2
    fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
