//! Waiting out a store that falters before replication starts: the shard-count
//! check and the start's one listing retry a transient failure with backoff (250 ms
//! doubling to 5 s) for as long as a lease would be waited for.

use std::future::Future;
use std::time::Duration;

use tracing::warn;

use crate::error::StoreError;

/// Runs `attempt` until it succeeds, fails for good, or `wait` has passed; each
/// transient failure is logged once, as `what`, for `url`.
pub async fn while_transient<T, Fut>(
    wait: Duration,
    url: &str,
    what: &str,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, StoreError>
where
    Fut: Future<Output = Result<T, StoreError>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    let mut delay = Duration::from_millis(250);
    loop {
        match attempt().await {
            Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                warn!(url, error = %e, "{what} failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            r => return r,
        }
    }
}
