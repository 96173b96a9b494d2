//! Where the tools the tests install for themselves live: `<target
//! dir>/tools`, next to the build, so `cargo clean` removes them too and
//! every worktree has its own copy.

use std::path::PathBuf;

/// `<target dir>/tools`, from the running test binary's path
/// (`<target dir>/[<triple>/]<profile>/deps/<test>`).
pub(crate) fn tools_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("the test binary lives in <target>/<profile>/deps")
        .join("tools")
}
