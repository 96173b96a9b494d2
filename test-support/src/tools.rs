//! Where the tools the tests install for themselves live: `<target
//! dir>/tools`, next to the build, so `cargo clean` removes them too and
//! every worktree has its own copy.

use std::path::PathBuf;

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
