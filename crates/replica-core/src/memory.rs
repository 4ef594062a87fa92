//! An object store in memory: a first-class [`ReplicaClient`], as object_store's
//! `InMemory` is, so that the engine, restore and the conformance suite can be tested
//! against a store whose behaviour is obvious, and against deliberately broken variants
//! of it ([`Faults`]).

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::ops::{Bound, Range};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::client::{
    ByteStream, Capabilities, MAX_VERSIONED_LEN, ObjectInfo, Payload, PutMode, PutOptions,
    ReplicaClient, StoreInfo, Version, Versioned, check_version, record_too_large,
};
use crate::error::{Op, StoreError};
use crate::key::{Key, KeyPrefix};

/// Ways to break the in-memory store, so that tests can check they catch each one.
#[derive(Debug, Default, Clone, Copy)]
pub struct Faults {
    /// Create-only checks, yields, then writes: not atomic.
    pub racy_create_only: bool,
    /// `list` returns only the first page, like an S3 client that ignores continuation.
    pub list_first_page: Option<usize>,
    /// `delete_many` deletes only the first batch, like one DeleteObjects request.
    pub delete_first_batch: Option<usize>,
    /// Timestamps are kept to the second.
    pub timestamp_seconds: bool,
    /// A range past the end is an error rather than cut short.
    pub range_past_end_errors: bool,
    /// Every operation is refused, except `list`, which returns nothing.
    pub denied_but_list_empty: bool,
    /// Every operation is refused.
    pub denied: bool,
    /// `list` reports the time of the put (the store's clock) as the LTX time.
    pub list_store_time_as_ltx_time: bool,
    /// `put_if` ignores the version it is given and overwrites, like a store that
    /// drops `If-Match`.
    pub ignores_if_match: bool,
    /// The first this many GETs answer NotFound, as for an object a live replica's
    /// retention deleted between a listing and the read.
    pub vanishing_reads: u32,
    /// The first this many HEADs answer NotFound, as for an object deleted between a
    /// listing and a HEAD of its time.
    pub vanishing_heads: u32,
    /// A `get` whose body is longer than this many bytes breaks off there with a
    /// connection reset, every time, as a connection that drops mid-response would; a
    /// shorter body arrives whole.
    pub gets_break_after: Option<u64>,
}

/// One stored object: its bytes, the store's time of the put, and the LTX time it was
/// put with.
#[derive(Debug, Clone)]
struct Object {
    data: Bytes,
    stored: SystemTime,
    ltx_time: Option<SystemTime>,
    /// Unique across the store's life, as a generation is.
    version: u64,
}

type Objects = Arc<Mutex<BTreeMap<String, Object>>>;

/// A store held in memory: a real implementation of the seam (create-only is atomic,
/// listings are ordered and honour `start_after`), for tests of the engine, restore and
/// the conformance suite itself, with optional [`Faults`].
#[derive(Debug)]
pub struct MemoryClient {
    objects: Objects,
    /// Shared with the clients made by [`MemoryClient::with_faults`].
    next_version: Arc<AtomicU64>,
    info: StoreInfo,
    faults: Faults,
    /// GETs answered NotFound so far under `faults.vanishing_reads`.
    vanished: std::sync::atomic::AtomicU32,
    /// HEADs answered NotFound so far under `faults.vanishing_heads`.
    vanished_heads: std::sync::atomic::AtomicU32,
}

/// Everything a store can offer.
pub const ALL_CAPABILITIES: Capabilities = Capabilities {
    create_only: true,
    ranged_get: true,
    list_has_ltx_time: true,
};

/// Nothing beyond the required behaviour.
pub const NO_CAPABILITIES: Capabilities = Capabilities {
    create_only: false,
    ranged_get: false,
    list_has_ltx_time: false,
};

impl MemoryClient {
    pub fn new(capabilities: Capabilities, faults: Faults) -> Self {
        let objects = Objects::default();
        let url = format!("memory://{:p}", Arc::as_ptr(&objects));
        Self {
            objects,
            next_version: Arc::new(AtomicU64::new(1)),
            info: StoreInfo::new("memory", url, capabilities),
            faults,
            vanished: Default::default(),
            vanished_heads: Default::default(),
        }
    }

    /// Another client on the same objects, with other `faults`: the store as one
    /// reader sees it through a bad network while the writer sees it whole.
    pub fn with_faults(&self, faults: Faults) -> Self {
        Self {
            objects: Arc::clone(&self.objects),
            next_version: Arc::clone(&self.next_version),
            info: self.info.clone(),
            faults,
            vanished: Default::default(),
            vanished_heads: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Object>> {
        // A panic while holding the lock leaves a consistent map (every update is a
        // single insert or remove), so a poisoned lock is still usable.
        self.objects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn refuse(&self, op: Op, key: &str) -> Result<(), StoreError> {
        if self.faults.denied || self.faults.denied_but_list_empty {
            return Err(StoreError::PermissionDenied {
                op,
                key: key.to_owned(),
                detail: "access denied".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl ReplicaClient for MemoryClient {
    fn info(&self) -> &StoreInfo {
        &self.info
    }

    fn set_file_mode(&self, _mode: crate::file_mode::FileMode) {
        // Objects in memory have no permission bits.
    }

    async fn put(&self, key: &Key, body: Payload, opts: &PutOptions) -> Result<(), StoreError> {
        let key = key.as_str();
        self.refuse(Op::Put, key)?;
        let data = match body {
            Payload::Bytes(b) => b,
            Payload::File(path) => match tokio::fs::read(&path).await {
                Ok(v) => Bytes::from(v),
                Err(e) => {
                    return Err(StoreError::Other {
                        op: Op::Put,
                        key: key.to_owned(),
                        source: format!("reading payload file {}: {e}", path.display()).into(),
                    });
                }
            },
        };
        let mut ltx_time = opts.timestamp;
        if self.faults.timestamp_seconds {
            ltx_time = ltx_time.map(|t| {
                let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                UNIX_EPOCH + Duration::from_secs(secs)
            });
        }
        let object = Object {
            data,
            stored: SystemTime::now(),
            ltx_time,
            version: self.next_version.fetch_add(1, Ordering::Relaxed),
        };
        let exists = || StoreError::AlreadyExists {
            key: key.to_owned(),
        };
        match opts.mode {
            PutMode::Overwrite => {
                self.lock().insert(key.to_owned(), object);
            }
            PutMode::CreateOnly if self.faults.racy_create_only => {
                if self.lock().contains_key(key) {
                    return Err(exists());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                self.lock().insert(key.to_owned(), object);
            }
            PutMode::CreateOnly => {
                let mut objects = self.lock();
                if objects.contains_key(key) {
                    return Err(exists());
                }
                objects.insert(key.to_owned(), object);
            }
        }
        Ok(())
    }

    async fn get(&self, key: &Key, range: Option<Range<u64>>) -> Result<ByteStream, StoreError> {
        let key = key.as_str();
        self.refuse(Op::Get, key)?;
        if self
            .vanished
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.faults.vanishing_reads).then_some(n + 1)
            })
            .is_ok()
        {
            return Err(StoreError::NotFound {
                key: key.to_owned(),
            });
        }
        let data = self
            .lock()
            .get(key)
            .map(|o| o.data.clone())
            .ok_or_else(|| StoreError::NotFound {
                key: key.to_owned(),
            })?;
        let len = data.len() as u64;
        let data = match range {
            None => data,
            Some(r) if self.faults.range_past_end_errors && r.end > len => {
                return Err(StoreError::Other {
                    op: Op::Get,
                    key: key.to_owned(),
                    source: "range not satisfiable".into(),
                });
            }
            Some(r) => {
                let start = r.start.min(len);
                let end = r.end.min(len).max(start);
                data.slice(start as usize..end as usize)
            }
        };
        if let Some(limit) = self.faults.gets_break_after
            && data.len() as u64 > limit
        {
            let body = std::io::Cursor::new(data.slice(..limit as usize));
            let reset = std::io::Error::new(ErrorKind::ConnectionReset, "connection reset");
            return Ok(Box::pin(body.chain(BrokenOff(Some(reset)))));
        }
        Ok(Box::pin(std::io::Cursor::new(data)))
    }

    async fn head(&self, key: &Key) -> Result<ObjectInfo, StoreError> {
        let key = key.as_str();
        self.refuse(Op::Head, key)?;
        if self
            .vanished_heads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.faults.vanishing_heads).then_some(n + 1)
            })
            .is_ok()
        {
            return Err(StoreError::NotFound {
                key: key.to_owned(),
            });
        }
        let objects = self.lock();
        let o = objects.get(key).ok_or_else(|| StoreError::NotFound {
            key: key.to_owned(),
        })?;
        Ok(ObjectInfo {
            key: key.to_owned(),
            size: o.data.len() as u64,
            last_modified: Some(o.stored),
            ltx_time: o.ltx_time,
        })
    }

    async fn list(
        &self,
        prefix: &KeyPrefix,
        start_after: Option<&str>,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        let prefix = prefix.as_str();
        if self.faults.denied_but_list_empty {
            return Ok(Vec::new());
        }
        self.refuse(Op::List, prefix)?;
        let lower = match start_after {
            Some(a) => Bound::Excluded(a.to_owned()),
            None => Bound::Unbounded,
        };
        let objects = self.lock();
        let all = objects
            .range((lower, Bound::Unbounded))
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, o)| ObjectInfo {
                key: k.clone(),
                size: o.data.len() as u64,
                last_modified: Some(o.stored),
                ltx_time: if self.faults.list_store_time_as_ltx_time {
                    Some(o.stored)
                } else if self.info.capabilities.list_has_ltx_time {
                    o.ltx_time
                } else {
                    None
                },
            });
        Ok(match self.faults.list_first_page {
            Some(n) => all.take(n).collect(),
            None => all.collect(),
        })
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<(), StoreError> {
        if let Some(k) = keys.first() {
            self.refuse(Op::Delete, k)?;
        }
        let n = self.faults.delete_first_batch.unwrap_or(keys.len());
        let mut objects = self.lock();
        for k in keys.iter().take(n) {
            objects.remove(k.as_str());
        }
        Ok(())
    }

    async fn get_versioned(&self, key: &Key) -> Result<Versioned, StoreError> {
        let key = key.as_str();
        self.refuse(Op::Get, key)?;
        let objects = self.lock();
        let o = objects.get(key).ok_or_else(|| StoreError::NotFound {
            key: key.to_owned(),
        })?;
        if o.data.len() > MAX_VERSIONED_LEN {
            return Err(record_too_large(key));
        }
        Ok(Versioned {
            body: o.data.clone(),
            version: Version::new(o.version.to_string()),
        })
    }

    async fn put_if(
        &self,
        key: &Key,
        body: Bytes,
        expected: Option<&Version>,
    ) -> Result<Version, StoreError> {
        let key = key.as_str();
        self.refuse(Op::Put, key)?;
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        let mut objects = self.lock();
        if !self.faults.ignores_if_match {
            let current = objects
                .get(key)
                .map(|o| Version::new(o.version.to_string()));
            check_version(key, expected, current.as_ref())?;
        }
        let object = Object {
            data: body,
            stored: SystemTime::now(),
            ltx_time: None,
            version,
        };
        objects.insert(key.to_owned(), object);
        Ok(Version::new(version.to_string()))
    }
}

/// The end of a response that broke off: its error, once, then end of stream.
struct BrokenOff(Option<std::io::Error>);

impl AsyncRead for BrokenOff {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.0.take().map_or(Ok(()), Err))
    }
}
