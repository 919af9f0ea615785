#!/usr/bin/env bash
# Soak test, not in CI (docs/reliability.md): the PV job for 30 minutes
# (SOAK_MINUTES) with 1 s checkpoints on S3 storage — the local S3 test
# server (scripts/s3-server.py) unless AWS_ENDPOINT_URL/S3_BUCKET are set.
# Prints a CSV sample every 10 s and a JSON summary; exits non-zero if a
# checkpoint failed, storage grew beyond retention, or RSS was not flat.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-target}/release/cutpoint"
[ -x "$BIN" ] || cargo build --release --bin cutpoint
if [ -z "${AWS_ENDPOINT_URL:-}" ]; then
  s3env="$(python3 scripts/s3-server.py start)" || { echo "soak: the S3 test server failed to start" >&2; exit 1; }
  eval "$s3env"
  trap 'python3 scripts/s3-server.py stop || true' EXIT
fi
exec python3 scripts/soak.py --bin "$BIN" --checkpoint-dir "s3://$S3_BUCKET/soak-$(date +%s)" \
  --minutes "${SOAK_MINUTES:-30}" "$@"
