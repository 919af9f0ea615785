#!/usr/bin/env bash
# The test command (the README's and CI's): every test of the workspace, in
# release mode so the RocksDB build is shared with `cargo run --release`.
# S3 tests run against a real S3-compatible server started here from the
# team's shared folder (../shared/s3); without it they are skipped loudly,
# and in CI (CI set) their absence fails the run. The tests include 50+
# seeded chaos cycles (tests/e2e/chaos.rs); after them the API fuzzer and
# the dashboard's headless-Chromium test (skipped loudly without Chromium:
# ./scripts/setup.sh --with-browser installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
if [ -z "${AWS_ENDPOINT_URL:-}" ] && [ -f ../shared/s3/start-s3-server.sh ]; then
  s3env="$(bash ../shared/s3/start-s3-server.sh)" || { echo "test.sh: the S3 test server failed to start" >&2; exit 1; }
  eval "$s3env"
  trap 'bash ../shared/s3/stop-s3-server.sh >/dev/null 2>&1 || true' EXIT
  echo "test.sh: S3 test server at $AWS_ENDPOINT_URL, bucket $S3_BUCKET" >&2
elif [ -z "${AWS_ENDPOINT_URL:-}" ]; then
  echo "test.sh: WARNING: no S3 server (../shared/s3 missing, AWS_ENDPOINT_URL unset): S3 variants are skipped" >&2
fi
cargo test --release --workspace
./scripts/fuzz-api.sh
./scripts/dashboard-test.sh
