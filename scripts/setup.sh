#!/usr/bin/env bash
# Installs what building and testing cutpoint needs on Debian/Ubuntu, then
# checks that it is really there (exit 1 naming what is missing):
#   g++, make       the rocksdb crate compiles RocksDB (C++)
#   libclang-dev    bindgen loads libclang.so and clang's headers; the image's
#                   libclang-cpp (the C++ interface library) is NOT enough
#   curl           the tests run the Docker image's HEALTHCHECK command
#   python3 with pip and venv/ensurepip
#                   the test S3 server is installed from PyPI, the API fuzzer
#                   (schemathesis) runs in its own venv
# With --with-browser also chromium and chromium-driver, for the dashboard's
# browser test (scripts/dashboard-test.sh; CI installs them).
#
# Packages are probed by what dpkg says is installed (`dpkg-query`), never by
# globbing library files; python by what the `python3` on PATH can do.
# --dry-run prints what would be installed and installs nothing.
# SETUP_ROOT (for the tests of this script) points the dpkg probes at another
# root: its dpkg database is $SETUP_ROOT/var/lib/dpkg.
# Idempotent; skips apt when everything is present. Run as root or with sudo.
set -euo pipefail

usage() { echo "usage: $0 [--with-browser] [--dry-run]" >&2; exit 2; }
browser=0
dry_run=0
for arg in "$@"; do
  case "$arg" in
    --with-browser) browser=1 ;;
    --dry-run) dry_run=1 ;;
    *) usage ;;
  esac
done
root="${SETUP_ROOT:-}"

# A Debian package is installed (not only known, not half-configured).
pkg_installed() {
  local status
  status="$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Status}' "$1" 2>/dev/null)" || return 1
  [ "$status" = "install ok installed" ]
}
# The python3 on PATH has pip, and can create a venv with pip in it (Debian's
# python3 without python3-venv lacks ensurepip, and `venv --help` still works).
python_ok() { command -v python3 >/dev/null 2>&1; }
pip_ok() { python3 -m pip --version >/dev/null 2>&1; }
venv_ok() { python3 -c 'import ensurepip, venv' >/dev/null 2>&1; }

# Prints the Debian packages that are missing, one per line.
missing_packages() {
  local pkgs=(g++ make libclang-dev curl)
  [ "$browser" = 0 ] || pkgs+=(chromium chromium-driver)
  for p in "${pkgs[@]}"; do pkg_installed "$p" || echo "$p"; done
  python_ok || { echo python3; echo python3-pip; echo python3-venv; return 0; }
  pip_ok || echo python3-pip
  venv_ok || echo python3-venv
}

command -v dpkg-query >/dev/null 2>&1 || {
  echo "setup: dpkg-query not found: this script supports Debian and Ubuntu; install g++, make, libclang-dev (libclang and its headers), python3 with pip and venv yourself" >&2
  exit 1
}

mapfile -t need < <(missing_packages)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$dry_run" = 1 ]; then
    echo "setup: would install ${need[*]}"
    exit 0
  fi
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  mapfile -t still < <(missing_packages)
  if [ "${#still[@]}" -gt 0 ]; then
    echo "setup: FAILED: still missing after apt-get install: ${still[*]}" >&2
    exit 1
  fi
elif [ "$dry_run" = 1 ]; then
  echo "setup: nothing to install"
  exit 0
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found: install Rust with rustup first (https://rustup.rs)" >&2; exit 1; }
echo "setup: ok" >&2
