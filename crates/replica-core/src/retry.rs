//! The one retry policy of every store request, and the backoff every retrying loop
//! shares.
//!
//! Backends translate and never retry (the S3 and Azure SDKs' own retries are turned
//! off): [`Retrying`], which the [`crate::registry::Registry`] puts around every
//! client it opens, retries a request that failed transiently, up to
//! [`Policy::REQUEST`]'s bound, with exponential backoff and jitter, waiting at least
//! what a throttling store asked for (`Retry-After`, or a second after a `SlowDown`
//! without one).
//!
//! Whether a request may be sent again depends on what a lost response could hide:
//! - reads, lists, deletes and overwrites are idempotent: resent freely;
//! - a create-only put is resent too: if the first attempt had landed, the resend is
//!   refused (`AlreadyExists`) and the caller decides by content whether the object
//!   there is its own (the shipper compares post-apply checksums);
//! - a compare-and-swap ([`ReplicaClient::put_if`]) is never resent here: a refusal
//!   after a lost response cannot tell our write from another's without reading the
//!   object back, which only the caller (the lease) can judge.
//!
//! A response body that breaks while it is read is not retried here either: restore
//! resumes it from its offset with a ranged request (`restore::fetch`).
//!
//! Loops that wait out a longer outage (the shipper, the lease, the start's listing)
//! use the same [`Backoff`] with their own bounds.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tracing::{debug, warn};

use crate::client::{
    ByteStream, ObjectInfo, Payload, PutOptions, ReplicaClient, StoreInfo, Version, Versioned,
};
use crate::error::{Chain, Op, StoreError};
use crate::key::{Key, KeyPrefix};

/// A throttling answer without `Retry-After` waits at least this long.
const THROTTLED_MIN: Duration = Duration::from_secs(1);
/// A store's `Retry-After` is honoured up to this long, so that a request stays
/// bounded whatever the store says.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(30);

/// How often and how patiently one request is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The delay before the first retry; it doubles up to `max`.
    pub first: Duration,
    pub max: Duration,
}

impl Policy {
    /// Every store request: 5 attempts over about 3 s (more when throttled), so a
    /// brief fault costs one slow request and a real outage is reported promptly to
    /// the loop that waits it out.
    pub const REQUEST: Policy = Policy {
        attempts: 5,
        first: Duration::from_millis(200),
        max: Duration::from_secs(10),
    };

    /// The backoff between this policy's attempts, for a retry loop of its own (one
    /// that must look at each failure, as a resumable upload does).
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.first, self.max)
    }

    /// Runs `attempt` until it succeeds, fails for good, or the attempts are spent;
    /// each retry is logged at debug level with `op` and `key`.
    pub async fn run<T, Fut>(
        &self,
        op: Op,
        key: &str,
        mut attempt: impl FnMut() -> Fut,
    ) -> Result<T, StoreError>
    where
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut backoff = self.backoff();
        let mut n = 1;
        loop {
            match attempt().await {
                Err(e) if e.is_transient() && n < self.attempts => {
                    let delay = backoff.next(Some(&e));
                    debug!(%op, key, attempt = n, delay_ms = delay.as_millis() as u64, error = %Chain(&e), "retrying");
                    tokio::time::sleep(delay).await;
                    n += 1;
                }
                r => return r,
            }
        }
    }
}

/// Exponential backoff with jitter: each delay is drawn from the upper half of the
/// current step (so retries of parallel requests spread out, and never shrink to
/// nothing), and the step doubles up to a cap. A throttled failure waits at least
/// what the store asked for.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    step: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            step: first,
            max,
        }
    }

    /// The delay before the next attempt after `failure`.
    pub fn next(&mut self, failure: Option<&StoreError>) -> Duration {
        match failure {
            Some(StoreError::Throttled { retry_after, .. }) => self.next_throttled(*retry_after),
            _ => self.next_step(),
        }
    }

    /// The delay after a throttling answer that asked for `retry_after` (if it said),
    /// for a backend loop that has not translated its failure into a [`StoreError`].
    pub fn next_throttled(&mut self, retry_after: Option<Duration>) -> Duration {
        self.next_step()
            .max(retry_after.unwrap_or(THROTTLED_MIN).min(RETRY_AFTER_MAX))
    }

    fn next_step(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        step / 2 + step.mul_f64(rand::random::<f64>() / 2.0)
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.step = self.first;
    }

    /// The step the next delay is drawn from (for logs).
    pub fn current(&self) -> Duration {
        self.step
    }
}

/// Parses an HTTP `Retry-After` value given in seconds (the form stores use; an
/// HTTP date is ignored, and the caller's backoff applies).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A client that retries each request under a [`Policy`]: see the module docs for
/// which requests are resent.
#[derive(Debug)]
pub struct Retrying {
    inner: Arc<dyn ReplicaClient>,
    policy: Policy,
}

impl Retrying {
    pub fn new(inner: Arc<dyn ReplicaClient>, policy: Policy) -> Self {
        Self { inner, policy }
    }
}

#[async_trait]
impl ReplicaClient for Retrying {
    fn info(&self) -> &StoreInfo {
        self.inner.info()
    }

    fn set_file_mode(&self, mode: crate::file_mode::FileMode) {
        self.inner.set_file_mode(mode);
    }

    async fn put(&self, key: &Key, body: Payload, opts: &PutOptions) -> Result<(), StoreError> {
        self.policy
            .run(Op::Put, key, || self.inner.put(key, body.clone(), opts))
            .await
    }

    async fn get(&self, key: &Key, range: Option<Range<u64>>) -> Result<ByteStream, StoreError> {
        self.policy
            .run(Op::Get, key, || self.inner.get(key, range.clone()))
            .await
    }

    async fn head(&self, key: &Key) -> Result<ObjectInfo, StoreError> {
        self.policy
            .run(Op::Head, key, || self.inner.head(key))
            .await
    }

    async fn list(
        &self,
        prefix: &KeyPrefix,
        start_after: Option<&str>,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        self.policy
            .run(Op::List, prefix, || self.inner.list(prefix, start_after))
            .await
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<(), StoreError> {
        let first = keys.first().map(|k| k.as_str()).unwrap_or("");
        self.policy
            .run(Op::Delete, first, || self.inner.delete_many(keys))
            .await
    }

    async fn get_versioned(&self, key: &Key) -> Result<Versioned, StoreError> {
        self.policy
            .run(Op::Get, key, || self.inner.get_versioned(key))
            .await
    }

    /// Sent once: see the module docs.
    async fn put_if(
        &self,
        key: &Key,
        body: Bytes,
        expected: Option<&Version>,
    ) -> Result<Version, StoreError> {
        self.inner.put_if(key, body, expected).await
    }
}

/// Waiting out a store that falters before replication starts: the shard-count
/// check and the start's one listing retry a transient failure with backoff (250 ms
/// doubling to 5 s) for as long as a lease would be waited for.
///
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
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    loop {
        match attempt().await {
            Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                warn!(url, error = %Chain(&e), "{what} failed; retrying");
                tokio::time::sleep(backoff.next(Some(&e))).await;
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests;
