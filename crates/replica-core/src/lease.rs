//! One writer per replica: a lease object at the replica root, taken before the first
//! write, renewed while replicating, released after the final flush of a clean stop.
//!
//! The object is Litestream 0.5's `lock.json` (`generation`, `expires_at`, `owner`),
//! so a Litestream that honours it and this tool exclude each other; we add a
//! `holder` with what the owner string cannot say (boot id, instance nonce, database)
//! and a `released` flag. Every change is a compare-and-swap
//! ([`ReplicaClient::put_if`]) against the version read, so of two contenders
//! exactly one wins, on every backend.
//!
//! Who reads and writes [`LeaseState`]: the renewal task writes the deadline and the
//! `lost` flag; [`Fenced`] (every engine write) reads them before each request. The
//! deadline is on the monotonic clock, so a process paused past it (SIGSTOP, a stall)
//! finds it passed when it resumes and writes nothing until a conditional renewal
//! proves no one else took the lease.
//!
//! Clocks: a contender takes an unreleased lease only after its `expires_at` has
//! passed on the contender's wall clock; the holder stops writing `ttl / 3` before
//! that on its own clock. Hosts whose clocks differ by less than that margin never
//! both write.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::client::{
    ByteStream, ObjectInfo, Payload, PutOptions, ReplicaClient, StoreInfo, Version, Versioned,
};
use crate::error::{Chain, StoreError};
use crate::host::{boot_id, host_name, pid_alive};
use crate::key::{Key, KeyPrefix};
use crate::meta;
use crate::retry::{Backoff, Policy};

/// The lease's key at the replica root, the name Litestream 0.5's leaser uses.
pub const KEY: &str = "lock.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long a lease lasts without renewal. It is renewed every `ttl / 3`; the
    /// holder stops writing `ttl / 3` before it expires.
    pub ttl: Duration,
    /// How long to wait for a live holder to release the lease before giving up.
    pub wait: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            wait: Duration::from_secs(300),
        }
    }
}

/// The object's fields. `generation`, `expires_at` and `owner` are Litestream's;
/// unknown fields are kept on rewrite.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    generation: i64,
    expires_at: String,
    #[serde(default)]
    owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    holder: Option<Holder>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    released: bool,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

/// Who holds the lease, precisely enough to tell a dead predecessor on this machine
/// from a live process elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Holder {
    host: String,
    pid: u32,
    #[serde(default)]
    boot_id: String,
    /// Random per acquisition; makes every body this process writes unique.
    instance: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    database: Option<String>,
}

impl Holder {
    fn this_process(database: Option<&str>) -> Self {
        Self {
            host: host_name(),
            pid: std::process::id(),
            boot_id: boot_id(),
            instance: format!("{:016x}", rand::random::<u64>()),
            database: database.map(str::to_owned),
        }
    }

    /// A holder that cannot be running any more: on this machine since the same
    /// boot, and either its pid is ours but not one of this process's leases (a
    /// restarted container whose process is again pid 1) or no process has it.
    fn is_dead_predecessor(&self, me: &Holder) -> bool {
        if self.instance == me.instance
            || self.host != me.host
            || self.boot_id.is_empty()
            || self.boot_id != me.boot_id
        {
            return false;
        }
        if self.pid == me.pid {
            return !live_instances().is_ok_and(|l| l.contains(&self.instance));
        }
        !pid_alive(self.pid)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "{url} is leased by {owner} until {until}, and was not released within {waited_s} s: another replicator is writing this replica; stop it, or give this database another replica URL"
    )]
    Held {
        url: String,
        owner: String,
        until: String,
        waited_s: u64,
    },

    #[error(
        "{url}: the lease object {KEY} is not valid ({detail}); if no other replicator writes this replica, delete the object"
    )]
    Malformed { url: String, detail: String },

    #[error("could not take the lease of {url} within {waited_s} s")]
    Store {
        url: String,
        waited_s: u64,
        #[source]
        source: StoreError,
    },
}

/// What the renewal task tells every writer.
#[derive(Debug)]
pub struct LeaseState {
    base: Instant,
    /// Nanoseconds after `base` until which writes may start.
    deadline_ns: AtomicU64,
    lost: AtomicBool,
    lost_to: Mutex<String>,
    changed: Notify,
    url: String,
}

impl LeaseState {
    fn new(url: String) -> Self {
        Self {
            base: Instant::now(),
            deadline_ns: AtomicU64::new(0),
            lost: AtomicBool::new(false),
            lost_to: Mutex::new(String::new()),
            changed: Notify::new(),
            url,
        }
    }

    fn extend_to(&self, deadline: Instant) {
        let ns = deadline.saturating_duration_since(self.base).as_nanos();
        self.deadline_ns
            .store(u64::try_from(ns).unwrap_or(u64::MAX), Ordering::Release);
    }

    fn mark_lost(&self, owner: String) {
        if let Ok(mut o) = self.lost_to.lock() {
            *o = owner;
        }
        self.deadline_ns.store(0, Ordering::Release);
        self.lost.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// How long writes may still start, or why they may not.
    pub fn permit(&self, key: &str) -> Result<Duration, StoreError> {
        if self.is_lost() {
            return Err(StoreError::Fenced {
                key: key.to_owned(),
                lost: true,
            });
        }
        let deadline = self.base + Duration::from_nanos(self.deadline_ns.load(Ordering::Acquire));
        match deadline.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Ok(left),
            _ => Err(StoreError::Fenced {
                key: key.to_owned(),
                lost: false,
            }),
        }
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Who took the lease, once it is lost.
    pub fn lost_to(&self) -> String {
        self.lost_to.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Resolves once the lease is lost.
    pub async fn lost(&self) {
        loop {
            let changed = self.changed.notified();
            if self.is_lost() {
                return;
            }
            changed.await;
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

/// A held lease and its renewal task.
#[derive(Debug)]
pub struct Lease {
    state: Arc<LeaseState>,
    renewal: Option<tokio::task::JoinHandle<()>>,
    inner: Arc<Mutex<Held>>,
    client: Arc<dyn ReplicaClient>,
    ttl: Duration,
    instance: String,
}

/// The last record we wrote and its version.
#[derive(Debug, Clone)]
struct Held {
    record: Record,
    version: Version,
}

impl Lease {
    /// Takes the lease of `client`'s replica, waiting up to `cfg.wait` for a live
    /// holder to release it (a line every few seconds says who holds it) and taking
    /// it over once its holder stopped renewing. `database` names what is replicated,
    /// for the holder's record.
    pub async fn acquire(
        client: Arc<dyn ReplicaClient>,
        cfg: LeaseConfig,
        database: Option<&str>,
    ) -> Result<Lease, LeaseError> {
        let url = client.info().redacted_url.clone();
        let me = Holder::this_process(database);
        let started = Instant::now();
        let mut last_said: Option<Instant> = None;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let key = Key::from_static(KEY);
        loop {
            let waited_s = started.elapsed().as_secs();
            let attempt = try_take(client.as_ref(), &key, &me, cfg.ttl).await;
            let wait = match attempt {
                Ok(Take::Taken(held, deadline)) => {
                    if let Ok(mut live) = live_instances() {
                        live.insert(me.instance.clone());
                    }
                    let state = Arc::new(LeaseState::new(url.clone()));
                    state.extend_to(deadline);
                    info!(url = %url, generation = held.record.generation, "lease taken");
                    let inner = Arc::new(Mutex::new(held));
                    let renewal =
                        tokio::spawn(renew(client.clone(), state.clone(), inner.clone(), cfg.ttl));
                    return Ok(Lease {
                        state,
                        renewal: Some(renewal),
                        inner,
                        client,
                        ttl: cfg.ttl,
                        instance: me.instance.clone(),
                    });
                }
                Ok(Take::Raced) => Duration::ZERO,
                Ok(Take::HeldBy { owner, until }) => {
                    if started.elapsed() >= cfg.wait {
                        return Err(LeaseError::Held {
                            url,
                            owner,
                            until,
                            waited_s,
                        });
                    }
                    if last_said.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                        info!(url = %url, holder = %owner, until = %until, waited_s, "waiting for the replica's lease: another replicator holds it");
                        last_said = Some(Instant::now());
                    }
                    Duration::from_millis(500).min(cfg.ttl / 4)
                }
                Err(TakeError::Malformed(detail)) => {
                    return Err(LeaseError::Malformed { url, detail });
                }
                Err(TakeError::Store(e)) if e.is_transient() && started.elapsed() < cfg.wait => {
                    if last_said.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                        warn!(url = %url, error = %Chain(&e), "the store is not answering; retrying the lease");
                        last_said = Some(Instant::now());
                    }
                    backoff.next(Some(&e))
                }
                Err(TakeError::Store(source)) => {
                    return Err(LeaseError::Store {
                        url,
                        waited_s,
                        source,
                    });
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// What every write checks; shared with [`Fenced`].
    pub fn state(&self) -> Arc<LeaseState> {
        self.state.clone()
    }

    /// Stops renewing and marks the lease released, so the next owner takes it at
    /// once. Called after the final flush of a clean stop; on any failure the lease
    /// simply expires.
    pub async fn release(mut self) {
        if let Some(r) = self.renewal.take() {
            r.abort();
        }
        if self.state.is_lost() {
            return;
        }
        let Ok(held) = self.inner.lock().map(|h| h.clone()) else {
            return;
        };
        let mut record = held.record.clone();
        record.released = true;
        record.expires_at = meta::format_timestamp(SystemTime::now());
        let key = Key::from_static(KEY);
        match put_record(self.client.as_ref(), &key, &record, Some(&held.version)).await {
            Ok(_) => info!(url = %self.state.url, "lease released"),
            Err(e) => {
                warn!(url = %self.state.url, error = %Chain(&e), ttl_s = self.ttl.as_secs(), "could not release the lease; it expires on its own")
            }
        }
        // Dropping `self` ends the permission to write.
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(r) = self.renewal.take() {
            r.abort();
        }
        if let Ok(mut live) = live_instances() {
            live.remove(&self.instance);
        }
        // Not released: the lease expires, and until then no one else writes.
        self.state.deadline_ns.store(0, Ordering::Release);
    }
}

enum Take {
    Taken(Held, Instant),
    /// Someone changed the object between our read and our write: read again.
    Raced,
    HeldBy {
        owner: String,
        until: String,
    },
}

enum TakeError {
    Malformed(String),
    Store(StoreError),
}

impl From<StoreError> for TakeError {
    fn from(e: StoreError) -> Self {
        TakeError::Store(e)
    }
}

async fn try_take(
    client: &dyn ReplicaClient,
    key: &Key,
    me: &Holder,
    ttl: Duration,
) -> Result<Take, TakeError> {
    let current = match client.get_versioned(key).await {
        Ok(v) => Some(v),
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let (generation, other, expected) = match &current {
        None => (1, serde_json::Map::new(), None),
        Some(v) => {
            let record: Record =
                serde_json::from_slice(&v.body).map_err(|e| TakeError::Malformed(e.to_string()))?;
            let expires = meta::parse_timestamp(&record.expires_at).ok_or_else(|| {
                TakeError::Malformed(format!("expires_at {:?}", record.expires_at))
            })?;
            let ours = record
                .holder
                .as_ref()
                .is_some_and(|h| h.instance == me.instance);
            let dead = record
                .holder
                .as_ref()
                .is_some_and(|h| h.is_dead_predecessor(me));
            let free = record.released || SystemTime::now() > expires || ours || dead;
            if !free {
                return Ok(Take::HeldBy {
                    owner: describe(&record),
                    until: record.expires_at.clone(),
                });
            }
            if dead && !record.released && SystemTime::now() <= expires {
                info!(holder = %describe(&record), "taking over the lease of a replicator that is no longer running");
            }
            (
                record.generation.saturating_add(1),
                record.other.clone(),
                Some(v.version.clone()),
            )
        }
    };
    let started = Instant::now();
    let record = Record {
        generation,
        expires_at: meta::format_timestamp(SystemTime::now() + ttl),
        owner: format!("{}:{}", me.host, me.pid),
        holder: Some(me.clone()),
        released: false,
        other,
    };
    match put_record(client, key, &record, expected.as_ref()).await {
        Ok(held) => Ok(Take::Taken(held, write_deadline(started, ttl))),
        Err(e) if e.is_precondition() => Ok(Take::Raced),
        Err(e) => Err(e.into()),
    }
}

/// Who holds the replica's lease now, if anyone: a description of the holder of a
/// lease that is neither released nor expired (a replicator writing this replica,
/// or one that died less than a TTL ago). One GET; a malformed lease counts as held,
/// by an unknown owner.
pub async fn current_holder(client: &dyn ReplicaClient) -> Result<Option<String>, StoreError> {
    let v = match client.get_versioned(&Key::from_static(KEY)).await {
        Ok(v) => v,
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let Ok(record) = serde_json::from_slice::<Record>(&v.body) else {
        return Ok(Some(format!("an unknown owner (unreadable {KEY})")));
    };
    let expired = meta::parse_timestamp(&record.expires_at).is_some_and(|t| SystemTime::now() > t);
    Ok((!record.released && !expired).then(|| describe(&record)))
}

/// Until when a lease written at `started` lets its holder write: a third of the TTL
/// before it expires, a margin for the clocks of the hosts that judge the expiry.
fn write_deadline(started: Instant, ttl: Duration) -> Instant {
    started + ttl - ttl / 3
}

fn describe(record: &Record) -> String {
    match &record.holder {
        Some(h) => match &h.database {
            Some(db) => format!("{}:{} (replicating {db})", h.host, h.pid),
            None => format!("{}:{}", h.host, h.pid),
        },
        None if record.owner.is_empty() => "an unnamed owner".into(),
        None => record.owner.clone(),
    }
}

/// Writes `record` if the object still has `expected`. A write whose response was
/// lost may have landed, and its retry (ours, or the SDK's, which we cannot see) is
/// then refused: so every refusal is checked by reading the object back, and if it
/// holds our body (unique by its nonce and expiry) the write is the success it was.
async fn put_record(
    client: &dyn ReplicaClient,
    key: &Key,
    record: &Record,
    expected: Option<&Version>,
) -> Result<Held, StoreError> {
    let body: Bytes = serde_json::to_vec(record)
        .map_err(|e| StoreError::Other {
            op: crate::error::Op::Put,
            key: KEY.into(),
            source: Box::new(e),
        })?
        .into();
    let held = |version| Held {
        record: record.clone(),
        version,
    };
    // Resent here, not by the client: a refusal is read back, and our own body
    // there means an earlier attempt landed and only its response was lost.
    CAS.run(crate::error::Op::Put, KEY, || async {
        match client.put_if(key, body.clone(), expected).await {
            Ok(version) => Ok(held(version)),
            Err(e) if e.is_precondition() => match client.get_versioned(key).await {
                Ok(v) if v.body == body => Ok(held(v.version)),
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    })
    .await
}

/// A lease write is retried briefly: a renewal must land well within its third of
/// the ttl, and the acquire loop waits out anything longer.
const CAS: Policy = Policy {
    attempts: 3,
    first: Duration::from_millis(200),
    max: Duration::from_millis(800),
};

/// Whether two records are the same write (our bodies are unique by nonce and
/// expiry).
fn is_same_record(a: &Record, b: &Record) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

/// Renews every `ttl / 3` (every second while renewals fail). A refused renewal
/// means someone else wrote the lease: it is lost, for good, unless what is there
/// is one of our own earlier attempts whose response never came (a timeout or a
/// dropped connection after the store applied it).
async fn renew(
    client: Arc<dyn ReplicaClient>,
    state: Arc<LeaseState>,
    inner: Arc<Mutex<Held>>,
    ttl: Duration,
) {
    let key = Key::from_static(KEY);
    let mut next = Instant::now() + ttl / 3;
    let mut lapsed = false;
    // Records sent since the last known version whose outcome is unknown.
    let mut unsure: Vec<Record> = Vec::new();
    loop {
        tokio::time::sleep_until(next.into()).await;
        let Ok(held) = inner.lock().map(|h| h.clone()) else {
            return;
        };
        let mut record = held.record.clone();
        let started = Instant::now();
        record.expires_at = meta::format_timestamp(SystemTime::now() + ttl);
        // A renewal that hangs must not outlive the time it is meant to buy.
        let attempt = tokio::time::timeout(
            ttl / 3,
            put_record(client.as_ref(), &key, &record, Some(&held.version)),
        )
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Transient {
                op: crate::error::Op::Put,
                key: KEY.into(),
                source: format!("no answer within {} ms", (ttl / 3).as_millis()).into(),
            })
        });
        match attempt {
            Ok(new) => {
                state.extend_to(write_deadline(started, ttl));
                if let Ok(mut h) = inner.lock() {
                    *h = new;
                }
                unsure.clear();
                if lapsed {
                    info!(url = %state.url, "lease renewed; writes resume");
                    lapsed = false;
                }
                next = started + ttl / 3;
            }
            Err(e) if e.is_precondition() => {
                let current = client.get_versioned(&key).await.ok();
                let theirs = current
                    .as_ref()
                    .and_then(|v| serde_json::from_slice::<Record>(&v.body).ok());
                if let (Some(v), Some(r)) = (&current, &theirs)
                    && let Some(mine) = unsure.iter().find(|u| is_same_record(u, r))
                {
                    // An earlier renewal landed after all: continue from it at once
                    // (the write deadline was not extended for it, so none is early).
                    if let Ok(mut h) = inner.lock() {
                        *h = Held {
                            record: mine.clone(),
                            version: v.version.clone(),
                        };
                    }
                    unsure.clear();
                    next = Instant::now();
                    continue;
                }
                let owner = theirs
                    .map(|r| describe(&r))
                    .unwrap_or_else(|| "an unknown writer".into());
                warn!(url = %state.url, holder = %owner, "lease lost: another replicator took it; this process writes nothing more to the replica");
                state.mark_lost(owner);
                return;
            }
            Err(e) => {
                unsure.push(record);
                if state.permit(KEY).is_err() && !lapsed {
                    warn!(url = %state.url, error = %Chain(&e), "lease lapsed: it could not be renewed in time; uploads pause (the spool keeps every change) until it is");
                    lapsed = true;
                } else if !lapsed {
                    warn!(url = %state.url, error = %Chain(&e), "lease renewal failed; retrying");
                }
                next = Instant::now() + Duration::from_secs(1).min(ttl / 6);
            }
        }
    }
}

/// A client whose writes happen only while the lease is valid: each put or delete
/// first asks [`LeaseState::permit`], and is abandoned (its connection dropped) if it
/// has not finished when the lease's deadline passes. Reads pass through.
#[derive(Debug)]
pub struct Fenced {
    inner: Arc<dyn ReplicaClient>,
    state: Arc<LeaseState>,
}

impl Fenced {
    pub fn new(inner: Arc<dyn ReplicaClient>, state: Arc<LeaseState>) -> Self {
        Self { inner, state }
    }

    async fn guarded<T>(
        &self,
        key: &str,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let left = self.state.permit(key)?;
        match tokio::time::timeout(left, f).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Fenced {
                key: key.to_owned(),
                lost: self.state.is_lost(),
            }),
        }
    }
}

#[async_trait]
impl ReplicaClient for Fenced {
    fn info(&self) -> &StoreInfo {
        self.inner.info()
    }

    fn set_file_mode(&self, mode: crate::file_mode::FileMode) {
        self.inner.set_file_mode(mode);
    }

    async fn put(&self, key: &Key, body: Payload, opts: &PutOptions) -> Result<(), StoreError> {
        self.guarded(key, self.inner.put(key, body, opts)).await
    }

    async fn get(&self, key: &Key, range: Option<Range<u64>>) -> Result<ByteStream, StoreError> {
        self.inner.get(key, range).await
    }

    async fn head(&self, key: &Key) -> Result<ObjectInfo, StoreError> {
        self.inner.head(key).await
    }

    async fn list(
        &self,
        prefix: &KeyPrefix,
        start_after: Option<&str>,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        self.inner.list(prefix, start_after).await
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<(), StoreError> {
        let first = keys.first().map(|k| k.as_str()).unwrap_or("");
        self.guarded(first, self.inner.delete_many(keys)).await
    }

    async fn get_versioned(&self, key: &Key) -> Result<Versioned, StoreError> {
        self.inner.get_versioned(key).await
    }

    async fn put_if(
        &self,
        key: &Key,
        body: Bytes,
        expected: Option<&Version>,
    ) -> Result<Version, StoreError> {
        self.guarded(key, self.inner.put_if(key, body, expected))
            .await
    }
}

/// The instances of the leases this process holds, so that a lease held by this very
/// process is never mistaken for one left by its previous incarnation.
fn live_instances() -> Result<
    std::sync::MutexGuard<'static, std::collections::HashSet<String>>,
    std::sync::PoisonError<std::sync::MutexGuard<'static, std::collections::HashSet<String>>>,
> {
    static LIVE: OnceLock<Mutex<std::collections::HashSet<String>>> = OnceLock::new();
    LIVE.get_or_init(Default::default).lock()
}

#[cfg(test)]
mod tests;
