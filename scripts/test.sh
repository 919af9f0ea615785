#!/usr/bin/env bash
# The test command (the README's and CI's): every test of the workspace, in
# release mode so the RocksDB build is shared with `cargo run --release`.
# S3 tests run against a real S3-compatible server: the project's own
# (scripts/s3-server.py, SeaweedFS from PyPI, started and stopped here), or
# the one AWS_ENDPOINT_URL and S3_BUCKET name. A server that cannot start
# fails the run; CUTPOINT_SKIP_S3=1 skips the S3 variants on purpose. The
# tests include 50+ seeded chaos cycles (tests/e2e/chaos.rs); after them the
# API fuzzer and the dashboard's headless-Chromium test (skipped loudly
# without Chromium: ./scripts/setup.sh --with-browser installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
if [ "${CUTPOINT_SKIP_S3:-}" = 1 ]; then
  echo "test.sh: WARNING: CUTPOINT_SKIP_S3=1: the S3 variants are skipped" >&2
elif [ -z "${AWS_ENDPOINT_URL:-}" ]; then
  s3env="$(python3 scripts/s3-server.py start)" || { echo "test.sh: the S3 test server failed to start" >&2; exit 1; }
  eval "$s3env"
  trap 'python3 scripts/s3-server.py stop || true' EXIT
  echo "test.sh: S3 test server at $AWS_ENDPOINT_URL, bucket $S3_BUCKET" >&2
else
  : "${S3_BUCKET:?test.sh: AWS_ENDPOINT_URL is set: set S3_BUCKET too}"
  echo "test.sh: S3 tests against $AWS_ENDPOINT_URL, bucket $S3_BUCKET" >&2
fi
cargo test --release --workspace
./scripts/fuzz-api.sh
./scripts/dashboard-test.sh
