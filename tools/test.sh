#!/usr/bin/env bash
# The whole test suite, as the README and .ci/run run it. Needs Rust, gcc/g++ and Python 3; the
# pinned CUDA compiler comes from PyPI (tools/install_cuda.sh), so every kernel is compiled for
# sm_90 on every run (PTRAG_REQUIRE_CUDA=1: a missing nvcc, an nvcc error or a register spill fails),
# and the kernels' emulated tests run on the CPU. No GPU is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash tools/install_cuda.sh)"
PTRAG_REQUIRE_CUDA=1 cargo test --locked --all-targets "$@"
# The CPU kernels again on the path of CPUs without AVX-512 (forced on a machine that has it).
PTRAG_CPU=avx2 PTRAG_REQUIRE_CUDA=1 cargo test --locked --lib --test kernels --test parity "$@"
# The CPU-only build, as on a machine without nvcc, must still compile.
env -u NVCC -u CUDA_HOME cargo check --locked --lib --quiet
