#!/usr/bin/env bash
# The GPU check, in two halves, because the GPU machine has no Rust toolchain or crates.io:
#
#   bash tools/gpu_check.sh build        # here, without a GPU: builds the engine, the kernel test
#                                        # binary and the CUDA benchmarks (every kernel compiled for
#                                        # sm_90, nvcc required) into target/gpu-check/
#   bash tools/gpu_check.sh run [DIR]    # on the GPU machine, from the repository root with
#                                        # target/gpu-check/ copied there: runs every kernel test with
#                                        # PTRAG_REQUIRE_GPU=1 (GPU parity tests FAIL instead of
#                                        # skipping when no GPU is usable), the whole-step parity
#                                        # test and GPU-vs-CPU training tests, under compute-sanitizer
#                                        # where one is installed; `train --device cuda` against
#                                        # `--device cpu` (PT-RAG on the small data, loss curves side
#                                        # by side); then the cuda/<family> benchmarks, `bench
#                                        # --device cuda` and PyTorch on the same GPU (if installed),
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
  cargo test --release --locked --no-run --test train --message-format=json 2>/dev/null | executables | while read -r exe; do cp "$exe" "$bundle/train-test"; done
  cargo bench --locked --no-run --bench cuda_kernels --message-format=json 2>/dev/null | executables | while read -r exe; do cp "$exe" "$bundle/cuda-bench"; done
  for f in "$bundle"/ptrag-engine "$bundle"/*-test "$bundle"/*-bench; do strip --strip-debug "$f"; done
  [[ -x "$bundle/kernels-test" && -x "$bundle/parity-test" && -x "$bundle/train-test" && -x "$bundle/cuda-bench" ]] || { echo "gpu_check.sh: test or bench binary missing from $bundle" >&2; exit 1; }
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
  { echo; echo "## Training on the GPU against the CPU (tests/train.rs, 30 PT-RAG steps on the tiny data)"; echo; echo '```'; } >> "$file"
  PTRAG_REQUIRE_GPU=1 "$bundle/train-test" gpu_training_cuda --test-threads=1 >> "$file" 2>&1 || status=$?
  echo '```' >> "$file"
  { echo; echo "## train --device cuda against --device cpu: PT-RAG, small data, 200 steps"; echo; echo '```'; } >> "$file"
  train_cuda_vs_cpu >> "$file" 2>&1 || status=$?
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
  { echo; echo "## bench --device cuda (paper shapes, 64 sets x 64 cells) and PyTorch eager on the same GPU"; echo; echo '```'; } >> "$file"
  for model in pt-rag state; do
    if python3 -c 'import torch' 2>/dev/null; then
      DEVICE=cuda ENGINE="$bundle/ptrag-engine" PY=python3 STEPS=20 THREADS="$(nproc)" bash tools/speed_vs_torch.sh "$model" >> "$file" 2>&1 || status=$?
    else
      "$bundle/ptrag-engine" bench --device cuda --model "$model" --steps 20 >> "$file" 2>&1 || status=$?
    fi
  done
  "$bundle/ptrag-engine" bench --device cuda --model pt-rag --steps 5 --breakdown >> "$file" 2>&1 || status=$?
  echo '```' >> "$file"
  mv "$file" "$results"
  echo "wrote $results (tests exit status $status)"
  return "$status"
}

# PT-RAG on the built-in small data, once per device, and the two loss curves side by side.
train_cuda_vs_cpu() {
  local work=/tmp/gpu-check-train
  rm -rf "$work" && mkdir -p "$work"
  "$bundle/ptrag-engine" synth --preset small --quiet --out "$work/small"
  local device start
  for device in cuda cpu; do
    start=$SECONDS
    "$bundle/ptrag-engine" --quiet train --device "$device" --data "$work/small" --model pt-rag --steps 200 --val-every 100 \
      --run-dir "$work/$device" | grep -E "steps at|energy distance|MSE of mean expression change, model|selected per cell"
    echo "$device: $((SECONDS - start)) s wall"
  done
  python3 - "$work" <<'PY'
import json, sys
def log(device):
    rows = [json.loads(l) for l in open(f"{sys.argv[1]}/{device}/log.jsonl")]
    return {r["step"]: r for r in rows if "loss" in r}
cuda, cpu = log("cuda"), log("cpu")
steps = sorted(cpu)
print("steps      loss cuda   loss cpu   (means over 20 steps)")
worst = 0.0
for i in range(0, len(steps) - 19, 20):
    window = steps[i:i + 20]
    a = sum(cuda[t]["loss"] for t in window) / 20
    b = sum(cpu[t]["loss"] for t in window) / 20
    worst = max(worst, abs(a - b) / abs(b))
    print(f"{window[0]:4d}-{window[-1]:<4d}  {a:9.4f}  {b:9.4f}")
print(f"largest relative difference of the 20-step means: {worst:.2e}")
PY
}

case "${1:-}" in
  build) build ;;
  run) shift; run "$@" ;;
  *) echo "usage: bash tools/gpu_check.sh build | run [DIR]" >&2; exit 2 ;;
esac
