#!/usr/bin/env bash
# Writes src/cuda/params.rs, the Rust twins of kernels/params.h's parameter structs and
# launch constants, with bindgen (run it after changing the header; the file is committed, so a
# build needs no libclang). Needs `bindgen` (cargo install bindgen-cli) and libclang.
# tests/param_structs.rs checks the committed file against the header with gcc.
set -euo pipefail
cd "$(dirname "$0")/.."
bindgen kernels/params.h \
    --allowlist-type '.*Params' --allowlist-var 'ATTENTION_.*' \
    --no-doc-comments --use-core --ctypes-prefix core::ffi \
    --raw-line '//! Written by tools/param_structs.sh (bindgen) from kernels/params.h: do not edit by hand.' \
    --raw-line '//! tests/param_structs.rs checks that it agrees with the header.' \
    --output src/cuda/params.rs
echo "wrote src/cuda/params.rs"
