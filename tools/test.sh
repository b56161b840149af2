#!/usr/bin/env bash
# The whole test suite, as the README and .ci/run run it. Needs only Rust (and gcc for crates
# that build C); everything else comes from crates.io.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked --all-targets "$@"
