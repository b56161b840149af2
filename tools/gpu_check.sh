#!/usr/bin/env bash
# The GPU check, in two halves, because the GPU machine has no Rust toolchain or crates.io:
#
#   bash tools/gpu_check.sh build        # here, without a GPU: builds the engine, the kernel test
#                                        # binary and the CUDA benchmarks (every kernel compiled for
#                                        # sm_90, nvcc required) into target/gpu-check/
#   bash tools/gpu_check.sh run [DIR]    # on the GPU machine, from the repository root with
#                                        # target/gpu-check/ copied there: runs every kernel test with
#                                        # PTRAG_REQUIRE_GPU=1 (GPU parity tests FAIL instead of
#                                        # skipping when no GPU is usable) and the whole-step parity
#                                        # test on the GPU, under compute-sanitizer
#                                        # where one is installed, then the cuda/<family> benchmarks,
#                                        # and writes DIR/gpu-check-<date>-<gpu>.md (default DIR:
#                                        # $OUT if set, else docs/gpu) with the device, driver, every
#                                        # test and every benchmark figure. Exit status: the tests'.
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=target/gpu-check

build() {
  eval "$(bash tools/install_cuda.sh)"
  export PTRAG_REQUIRE_CUDA=1
  rm -rf "$bundle" && mkdir -p "$bundle"
  cargo build --release --locked --quiet
  cp target/release/ptrag-engine "$bundle/"
  git rev-parse --short HEAD > "$bundle/COMMIT"
  executables() { python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"): print(m["executable"])'; }
  cargo test --release --locked --no-run --test kernels --message-format=json 2>/dev/null | executables | while read -r exe; do cp "$exe" "$bundle/kernels-test"; done
  cargo test --release --locked --no-run --test parity --message-format=json 2>/dev/null | executables | while read -r exe; do cp "$exe" "$bundle/parity-test"; done
  cargo bench --locked --no-run --bench cuda_kernels --message-format=json 2>/dev/null | executables | while read -r exe; do cp "$exe" "$bundle/cuda-bench"; done
  for f in "$bundle"/ptrag-engine "$bundle"/*-test "$bundle"/*-bench; do strip --strip-debug "$f"; done
  [[ -x "$bundle/kernels-test" && -x "$bundle/parity-test" && -x "$bundle/cuda-bench" ]] || { echo "gpu_check.sh: test or bench binary missing from $bundle" >&2; exit 1; }
  du -sh "$bundle"/*
}

run() {
  local dir="${1:-${OUT:-docs/gpu}}"
  [[ -x "$bundle/kernels-test" ]] || { echo "gpu_check.sh: no $bundle/kernels-test; run 'bash tools/gpu_check.sh build' first" >&2; exit 2; }
  mkdir -p "$dir"
  # cuBLAS for the dense products: the machine's CUDA libraries, or the one PyTorch's wheels bring.
  local cublas
  cublas=$(find /usr/local/cuda*/lib64 "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null)" \
    -name 'libcublas.so*' 2>/dev/null | head -1 || true)
  [[ -n "$cublas" ]] && export LD_LIBRARY_PATH="$(dirname "$cublas")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  local info gpu results file status=0
  info=$("$bundle/ptrag-engine" info)
  gpu=$("$bundle/ptrag-engine" info --json | python3 -c 'import json,sys; g=json.load(sys.stdin)["gpu"]; print(g["name"] if g else "no-gpu")' | tr -c 'A-Za-z0-9\n' '-' )
  results="$dir/gpu-check-$(date -u +%F)-${gpu}.md"
  # Written under a temporary name and renamed when complete: an interrupted run leaves no results file.
  file="$results.partial"
  trap 'rm -f "$file"' INT TERM
  {
    echo "# GPU check, $(date -u '+%F %T UTC')"
    echo
    echo "Commit: $(cat "$bundle/COMMIT" 2>/dev/null || echo unknown)"
    echo
    echo '```'
    echo "$info"
    echo '```'
    echo
    echo "## Kernel tests (PTRAG_REQUIRE_GPU=1)"
    echo
    echo '```'
  } > "$file"
  PTRAG_REQUIRE_GPU=1 "$bundle/kernels-test" --test-threads=1 >> "$file" 2>&1 || status=$?
  echo '```' >> "$file"
  { echo; echo "## Whole training step on the GPU against PyTorch (all five parity cases)"; echo; echo '```'; } >> "$file"
  PTRAG_REQUIRE_GPU=1 PTRAG_PARITY_FIXTURES=tests/fixtures/parity "$bundle/parity-test" training_step_cuda --test-threads=1 >> "$file" 2>&1 || status=$?
  echo '```' >> "$file"
  if command -v compute-sanitizer >/dev/null; then
    { echo; echo "## compute-sanitizer (memcheck) on the CUDA parity tests"; echo; echo '```'; } >> "$file"
    PTRAG_REQUIRE_GPU=1 compute-sanitizer --tool memcheck "$bundle/kernels-test" cuda_matches --test-threads=1 >> "$file" 2>&1 || status=$?
    echo '```' >> "$file"
  else
    { echo; echo "compute-sanitizer: not installed on this machine, not run."; } >> "$file"
  fi
  { echo; echo "## Benchmarks (criterion, cuda/<family>)"; echo; echo '```'; } >> "$file"
  "$bundle/cuda-bench" --bench >> "$file" 2>&1 || status=$?
  echo '```' >> "$file"
  mv "$file" "$results"
  echo "wrote $results (tests exit status $status)"
  return "$status"
}

case "${1:-}" in
  build) build ;;
  run) shift; run "$@" ;;
  *) echo "usage: bash tools/gpu_check.sh build | run [DIR]" >&2; exit 2 ;;
esac
