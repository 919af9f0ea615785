#!/usr/bin/env bash
# The test command (the README's and CI's): every test of the workspace,
# in release mode so the RocksDB build is shared with `cargo run --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo test --release --workspace
