//! Object-store request accounting: a [`ReplicaClient`] wrapper that counts every call
//! at the seam, so the engine, the benchmarks and the metrics see what each operation
//! costs. A `list` call counts once even if the backend pages through it.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use crate::client::{
    ByteStream, ObjectInfo, Payload, PutOptions, ReplicaClient, StoreInfo, Version, Versioned,
};
use crate::error::StoreError;
use crate::key::{Key, KeyPrefix};

/// Calls made through a [`Counted`] client, failed ones included (a store bills them).
#[derive(Debug, Default)]
pub struct RequestCounts {
    pub put: AtomicU64,
    pub get: AtomicU64,
    pub head: AtomicU64,
    pub list: AtomicU64,
    pub delete: AtomicU64,
    /// Bytes of successful puts.
    pub put_bytes: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RequestTotals {
    pub put: u64,
    pub get: u64,
    pub head: u64,
    pub list: u64,
    pub delete: u64,
    pub put_bytes: u64,
}

impl RequestTotals {
    /// Requests of every kind.
    pub fn requests(&self) -> u64 {
        self.put + self.get + self.head + self.list + self.delete
    }
}

impl RequestCounts {
    pub fn totals(&self) -> RequestTotals {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RequestTotals {
            put: l(&self.put),
            get: l(&self.get),
            head: l(&self.head),
            list: l(&self.list),
            delete: l(&self.delete),
            put_bytes: l(&self.put_bytes),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Counts the calls made to `inner`.
#[derive(Debug)]
pub struct Counted {
    inner: Arc<dyn ReplicaClient>,
    counts: Arc<RequestCounts>,
}

impl Counted {
    pub fn new(inner: Arc<dyn ReplicaClient>, counts: Arc<RequestCounts>) -> Self {
        Self { inner, counts }
    }
}

#[async_trait]
impl ReplicaClient for Counted {
    fn info(&self) -> &StoreInfo {
        self.inner.info()
    }

    fn set_file_mode(&self, mode: crate::file_mode::FileMode) {
        self.inner.set_file_mode(mode);
    }

    async fn put(&self, key: &Key, body: Payload, opts: &PutOptions) -> Result<(), StoreError> {
        bump(&self.counts.put);
        // A payload that cannot be sized fails in the backend, which says why.
        let len = body.size().await.unwrap_or(0);
        self.inner.put(key, body, opts).await?;
        self.counts.put_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    async fn get(&self, key: &Key, range: Option<Range<u64>>) -> Result<ByteStream, StoreError> {
        bump(&self.counts.get);
        self.inner.get(key, range).await
    }

    async fn head(&self, key: &Key) -> Result<ObjectInfo, StoreError> {
        bump(&self.counts.head);
        self.inner.head(key).await
    }

    async fn list(
        &self,
        prefix: &KeyPrefix,
        start_after: Option<&str>,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        bump(&self.counts.list);
        self.inner.list(prefix, start_after).await
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        bump(&self.counts.delete);
        self.inner.delete_many(keys).await
    }

    async fn get_versioned(&self, key: &Key) -> Result<Versioned, StoreError> {
        bump(&self.counts.get);
        self.inner.get_versioned(key).await
    }

    async fn put_if(
        &self,
        key: &Key,
        body: Bytes,
        expected: Option<&Version>,
    ) -> Result<Version, StoreError> {
        bump(&self.counts.put);
        let len = body.len() as u64;
        let v = self.inner.put_if(key, body, expected).await?;
        self.counts.put_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(v)
    }
}
