#!/usr/bin/env bash
# On an NVIDIA machine: the GPU tests, then the kernel and runtime benchmarks, in one go (a few
# minutes; each step has its own time limit, under 8 minutes together).
# Needs the gpu extra (CuPy, onnxruntime-gpu) in the Python it runs; PYTHON overrides which.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
timeout 180 "$python" -m pytest -q -p no:cacheprovider tests/gpu -rs
timeout 120 "$python" -m benchmarks.gpu_kernels
timeout 150 "$python" -m benchmarks.gpu_runtime
