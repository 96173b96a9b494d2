//! One three-node cluster for every test of a test binary that only needs
//! a JetStream cluster to be there (each test isolates itself with a
//! namespace of its own), instead of three new processes per test.
//!
//! A `static` is never dropped, so the nodes are killed by an `atexit`
//! handler when the binary exits (the test harness returns from `main`).
//! A binary that is itself SIGKILLed leaves them running.

use std::sync::Mutex;

use tokio::sync::OnceCell;

use super::NatsCluster;

static SHARED: OnceCell<NatsCluster> = OnceCell::const_new();
static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

extern "C" fn kill_shared() {
    let pids = PIDS.lock().map(|p| p.clone()).unwrap_or_default();
    for pid in pids {
        // SAFETY: kill(2) with a pid this binary started; no memory is
        // touched.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

/// The binary's shared 3-node cluster, started on first use. Tests must
/// not kill its nodes (start a cluster of their own for that).
pub async fn shared_cluster() -> &'static NatsCluster {
    SHARED
        .get_or_init(|| async {
            let c = NatsCluster::start(3).await;
            PIDS.lock().expect("pids lock").extend(c.pids());
            // SAFETY: registers a plain extern "C" function with no
            // captured state.
            unsafe {
                libc::atexit(kill_shared);
            }
            c
        })
        .await
}
