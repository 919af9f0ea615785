#!/usr/bin/env bash
# Fuzzes the REST API from api/openapi.yaml with schemathesis (PyPI) against
# the real server: no 5xx, every status, content type and body as documented.
# Run by scripts/test.sh after the Rust tests; prints the case count.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-target}/release/cutpoint"
[ -x "$BIN" ] || cargo build --release --bin cutpoint
venv="${XDG_CACHE_HOME:-$HOME/.cache}/cutpoint-fuzz-venv"
if [ ! -x "$venv/bin/st" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==4.32.5" >&2
fi
work="$(mktemp -d)"
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
CUTPOINT_TOKEN=fuzz "$BIN" serve --listen 127.0.0.1:0 --checkpoint-dir "$work/chk" --work-dir "$work/work" >"$work/out" 2>"$work/err" &
server=$!
for _ in $(seq 1 100); do [ -s "$work/out" ] && break; sleep 0.1; done
addr="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["listening"])' "$work/out")"
"$venv/bin/st" run api/openapi.yaml --url "http://$addr" -H "Authorization: Bearer fuzz" \
  --max-examples 30 --seed 85769417118574655523243346006665734000 \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
kill -0 "$server" || { echo "fuzz-api: the server died" >&2; cat "$work/err" >&2; exit 1; }
echo "fuzz-api: server still running after the fuzz run"
