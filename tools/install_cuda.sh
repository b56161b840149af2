#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler (nvcc, ptxas, NVVM, headers) from PyPI into .cuda-venv/
# and prints the environment that build.rs reads. No GPU and no system CUDA are needed.
# Pinned to 13.0 because the GPU machines' driver is CUDA 13.0: a newer nvcc emits PTX that driver
# cannot load, and nvvm must match or ptxas rejects the PTX. About 100 MB, cached after the first run.
#
#   eval "$(bash tools/install_cuda.sh)"    # sets NVCC and CUDA_HOME for this shell
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$PWD/.cuda-venv"
packages=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
)
stamp="$venv/.installed-$(printf '%s\n' "${packages[@]}" | sha256sum | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${packages[@]}" >&2
  touch "$stamp"
fi
cuda_home=$(echo "$venv"/lib/python3.*/site-packages/nvidia/cu13)
if [[ ! -x "$cuda_home/bin/nvcc" ]]; then
  echo "install_cuda.sh: no nvcc at $cuda_home/bin/nvcc after installing ${packages[*]}" >&2
  exit 1
fi
echo "export CUDA_HOME='$cuda_home'"
echo "export NVCC='$cuda_home/bin/nvcc'"
