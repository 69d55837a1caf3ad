#!/usr/bin/env bash
# The GPU half of kernbin's checks, for a machine with an NVIDIA GPU and no package registry:
# installs the carried wheels (.devwheels/: blake3, platformdirs, pyelftools, nvidia-nvfatbin, made by
# `pip download` on a connected machine), runs the CUDA tests, then (with "bench") `kernbin bench
# --target cuda:0`, benchmarks/cuda_triton.py and benchmarks/cuda_load_floor.py. "triton" runs the Triton tests (tests/test_triton.py,
# tests/test_triton_gpu.py) and benchmarks/triton_start.py (N: its --n, default 256,1024). "load" runs the
# CUDA tests with tests/test_load_path.py, then benchmarks/load_path.py on the real driver and
# benchmarks/cuda_load_floor.py (the load path's figures).
# Results go to OUT (default benchmarks/results).
#   tools/gpu_run.sh tests|bench|all [OUT] [REPEAT]
#   tools/gpu_run.sh triton [OUT] [REPEAT] [N]
set -uo pipefail
what=${1:-all}; out=${2:-benchmarks/results}; repeat=${3:-7}
mkdir -p "$out"
py=python3
$py -m pip install -q --no-index --find-links .devwheels blake3 msgspec platformdirs pyelftools nvidia-nvfatbin filelock rich 2>&1 | tail -2
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/cuda_gpu.txt"
if [ "$what" = load ]; then
    timeout 200 $py -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_samples_cuda.py tests/test_load_path.py 2>&1 | tee "$out/cuda_tests.txt" | tail -25
    timeout 240 $py benchmarks/load_path.py --driver real --repeat "$repeat" --json "$out/load_path_cuda.json" 2>&1 | tee "$out/load_path_cuda.txt" | tail -9
    timeout 120 $py benchmarks/cuda_load_floor.py --repeat "$repeat" --json "$out/cuda_load_floor.json" 2>&1 | tee "$out/cuda_load_floor.txt" | tail -6
    exit 0
fi
if [ "$what" = triton ]; then
    $py -m pytest -q -p no:cacheprovider -rs tests/test_triton.py tests/test_triton_gpu.py 2>&1 | tee "$out/triton_tests.txt" | tail -25
    $py benchmarks/triton_start.py --repeat "$repeat" --n "${4:-256,1024}" --json "$out/triton_start.json" 2>&1 | tee "$out/triton_start.txt" | tail -16
    exit 0
fi
if [ "$what" != bench ]; then
    $py -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_samples_cuda.py 2>&1 | tee "$out/cuda_tests.txt" | tail -25
fi
if [ "$what" != tests ]; then
    $py -m kernbin bench --target cuda:0 --repeat "$repeat" --json > "$out/bench_cuda.json" 2> "$out/bench_cuda.err"; echo "bench rc=$?"
    $py -c "import json,sys; r=json.load(open(sys.argv[1])); [print(k['name'], round(k['ir_s']*1e3,2), round(k['native_s']*1e3,3), round(k['raw_native_s']*1e3,3), round(k['ratio']), round(k['overhead'],3), k['correct']) for k in r['kernels']]; print('aggregate', round(r['ratio']), round(r['native_over_raw'],3))" "$out/bench_cuda.json"
    $py benchmarks/cuda_triton.py --repeat "$repeat" --json "$out/cuda_triton.json" 2>&1 | tee "$out/cuda_triton.txt" | tail -14
    $py benchmarks/cuda_load_floor.py --repeat "$repeat" --json "$out/cuda_load_floor.json" 2>&1 | tee "$out/cuda_load_floor.txt" | tail -6
fi
