#!/usr/bin/env bash
# Tests the checkpoint dashboard (crates/server/assets/dashboard.html, served
# at GET /) in headless Chromium against the real server running a job:
# scripts/dashboard_test.py drives it with selenium. Needs the Debian
# packages chromium and chromium-driver; without them the test is skipped
# with a warning (exit 0), or fails with CUTPOINT_REQUIRE_BROWSER=1.
#   DASHBOARD_SCREENSHOT=/tmp/dash.png  save a screenshot of the dashboard
#   DASHBOARD_HTML=crates/server/assets/dashboard.html  (development) serve
#       this file at / through a local proxy instead of the binary's copy
set -euo pipefail
cd "$(dirname "$0")/.."

chromium="$(command -v chromium || command -v chromium-browser || true)"
driver="$(command -v chromedriver || true)"
[ -n "$driver" ] || { [ -x /usr/lib/chromium/chromedriver ] && driver=/usr/lib/chromium/chromedriver; } || true
if [ -z "$chromium" ] || [ -z "$driver" ]; then
  cat >&2 <<'EOF'
########################################################################
WARNING: dashboard test SKIPPED: chromium/chromedriver not installed (apt-get install chromium chromium-driver)
WARNING: the dashboard at GET / was NOT tested in a browser.
########################################################################
EOF
  [ "${CUTPOINT_REQUIRE_BROWSER:-}" = 1 ] && exit 1
  exit 0
fi

BIN="${CARGO_TARGET_DIR:-target}/release/cutpoint"
[ -x "$BIN" ] || cargo build --release --bin cutpoint

SELENIUM_VERSION=4.51.0
venv="${XDG_CACHE_HOME:-$HOME/.cache}/cutpoint-browser-venv"
if ! "$venv/bin/python" -c "import selenium, sys; sys.exit(selenium.__version__ != '$SELENIUM_VERSION')" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "selenium==$SELENIUM_VERSION" >&2
fi

work="$(mktemp -d)"
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
CUTPOINT_TOKEN=dash "$BIN" serve --listen 127.0.0.1:0 --checkpoint-dir "$work/chk" --work-dir "$work/work" >"$work/out" 2>"$work/err" &
server=$!
for _ in $(seq 1 100); do [ -s "$work/out" ] && break; sleep 0.1; done
addr="$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["listening"])' "$work/out")" || {
  echo "dashboard-test: the server did not start" >&2; cat "$work/err" >&2; exit 1; }

# The PV example, slowed down to run for minutes (the test takes < 1), with
# checkpoints every second and enough of them retained to restore from.
python3 - examples/pv.json "$work/pv.json" <<'EOF'
import json, sys
spec = json.load(open(sys.argv[1]))
spec["source"]["rate_per_s"] = 200000
spec["source"]["events"] = 200000 * 900
spec["checkpoint"].update(interval_ms=1000, retention=10)
# Event time, so the tasks table shows watermarks and timers.
spec["event_time"] = {"field": "ts", "max_out_of_orderness_ms": 100}
json.dump(spec, open(sys.argv[2], "w"))
EOF
python3 - "http://$addr/v1/jobs" "$work/pv.json" <<'EOF'
import sys, urllib.request
req = urllib.request.Request(sys.argv[1], data=open(sys.argv[2], "rb").read(), method="POST",
                             headers={"Authorization": "Bearer dash", "Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=30) as r:
    assert r.status == 201, r.status
EOF

args=(--url "http://$addr/" --token dash --job pv --chromium "$chromium" --chromedriver "$driver")
[ -n "${DASHBOARD_SCREENSHOT:-}" ] && args+=(--screenshot "$DASHBOARD_SCREENSHOT")
[ -n "${DASHBOARD_HTML:-}" ] && args+=(--serve-html "$DASHBOARD_HTML")
if ! "$venv/bin/python" scripts/dashboard_test.py "${args[@]}"; then
  echo "--- server stderr (tail) ---" >&2
  tail -n 40 "$work/err" >&2
  exit 1
fi
kill -0 "$server" || { echo "dashboard-test: the server died" >&2; cat "$work/err" >&2; exit 1; }
