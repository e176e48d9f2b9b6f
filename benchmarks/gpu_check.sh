#!/usr/bin/env bash
# Train mlp and convnet on CUDA and on the CPU, compare, print step times.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/gpu_check.py "$@"
