//! Polling until a condition holds, for at most a timeout. A test passes
//! the very condition it then asserts, so it never asserts on a state it
//! did not wait for.

use std::{future::Future, time::Duration};

/// The first wait between two polls; it doubles up to `MAX_PAUSE`, so a
/// quick condition is seen quickly and a slow one costs few polls.
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_millis(100);

/// Polls `f` until it returns `Some`, for at most `timeout`; that value, or
/// `None` if `timeout` passed first.
pub async fn eventually_some<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = FIRST_PAUSE;
    while tokio::time::Instant::now() < deadline {
        if let Some(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
    None
}

/// Polls `f` until it returns true, for at most `timeout`; whether it did.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_some(timeout, || {
        let held = f();
        async move { held.await.then_some(()) }
    })
    .await
    .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_the_first_value_that_holds() {
        let polls = AtomicU32::new(0);
        let got = eventually_some(Duration::from_secs(10), || async {
            let n = polls.fetch_add(1, Ordering::Relaxed) + 1;
            (n >= 3).then_some(n)
        })
        .await;
        assert_eq!(got, Some(3));
    }

    #[tokio::test]
    async fn gives_up_after_the_timeout() {
        let start = std::time::Instant::now();
        assert!(!eventually(Duration::from_millis(200), || async { false }).await);
        assert!(start.elapsed() >= Duration::from_millis(200));
    }
}
