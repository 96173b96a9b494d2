//! Stopping on SIGTERM (containers, systemd) or SIGINT (Ctrl-C).

use std::future::Future;

/// Registers for SIGTERM and SIGINT now and returns a future that
/// resolves on either. Registering at the call, not at the first poll,
/// means a signal that comes right after a process says it is ready (its
/// "listening on" line) starts a graceful shutdown instead of killing it
/// with the default action or going unseen. Call it inside a Tokio
/// runtime, before announcing readiness.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(term) => {}
                _ = wait(int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
