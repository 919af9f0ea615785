//! `scripts/setup.sh` decides what to install from what is really there:
//! its dpkg probes are pointed at a fake root (`SETUP_ROOT`, a dpkg database
//! written here) and `python3` at a fake on `PATH`; `--dry-run` prints the
//! plan. The first case is the fresh image that broke the README's first
//! command: libclang-cpp present (its `.so` matched the old file glob),
//! libclang-dev absent.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A fake root whose dpkg database lists `installed` as installed and
/// `removed` as removed with config files left (not installed).
fn fake_root(dir: &Path, installed: &[&str], removed: &[&str]) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
    let entry = |p: &str, status: &str| {
        format!("Package: {p}\nStatus: {status}\nVersion: 1\nArchitecture: amd64\n\n")
    };
    let status: String = installed
        .iter()
        .map(|p| entry(p, "install ok installed"))
        .chain(
            removed
                .iter()
                .map(|p| entry(p, "deinstall ok config-files")),
        )
        .collect();
    std::fs::write(root.join("var/lib/dpkg/status"), status).unwrap();
    // the library files of the fresh image: the C++ interface library only
    let llvm = root.join("usr/lib/llvm-14/lib");
    std::fs::create_dir_all(&llvm).unwrap();
    std::fs::write(llvm.join("libclang-cpp.so.14"), b"").unwrap();
    root
}

/// A `python3` that has pip, and ensurepip only if `venv` is true.
fn fake_python(dir: &Path, venv: bool) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let rc = if venv { 0 } else { 1 };
    let py = bin.join("python3");
    std::fs::write(
        &py,
        format!("#!/bin/sh\ncase \"$*\" in *ensurepip*) exit {rc};; esac\nexit 0\n"),
    )
    .unwrap();
    std::fs::set_permissions(&py, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// Runs `setup.sh --dry-run [extra]` against the fakes; returns its stdout.
fn plan(root: &Path, bin: &Path, extra: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup.sh");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = Command::new("bash")
        .arg(script)
        .arg("--dry-run")
        .args(extra)
        .env("SETUP_ROOT", root)
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(out.status.success(), "setup.sh failed: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

const BUILD: [&str; 3] = ["g++", "make", "libclang-dev"];

#[test]
fn only_libclang_cpp_present_plans_libclang_dev() {
    let dir = tempfile::tempdir().unwrap();
    let root = fake_root(dir.path(), &["g++", "make", "libclang-cpp14"], &[]);
    let out = plan(&root, &fake_python(dir.path(), true), &[]);
    assert_eq!(out.trim(), "setup: would install libclang-dev");
}

#[test]
fn everything_present_plans_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = fake_root(dir.path(), &BUILD, &[]);
    let out = plan(&root, &fake_python(dir.path(), true), &[]);
    assert_eq!(out.trim(), "setup: nothing to install");
}

#[test]
fn removed_packages_and_python_without_ensurepip_are_planned() {
    let dir = tempfile::tempdir().unwrap();
    let root = fake_root(dir.path(), &["libclang-dev"], &["g++", "make"]);
    let out = plan(&root, &fake_python(dir.path(), false), &[]);
    assert_eq!(out.trim(), "setup: would install g++ make python3-venv");
}

#[test]
fn with_browser_plans_chromium_and_its_driver() {
    let dir = tempfile::tempdir().unwrap();
    let root = fake_root(dir.path(), &BUILD, &["chromium"]);
    let out = plan(&root, &fake_python(dir.path(), true), &["--with-browser"]);
    assert_eq!(out.trim(), "setup: would install chromium chromium-driver");
}
