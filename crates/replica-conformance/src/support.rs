//! Helpers shared by the cases: checked wrappers around the client that panic with a
//! message naming the operation, and a position-addressable pseudo-random pattern so that
//! large objects can be verified while streaming, without a second copy.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use replica_core::client::{ObjectInfo, Payload, PutMode, PutOptions, ReplicaClient};
use replica_core::error::{Chain, StoreError};
use replica_core::key::{Key, KeyPrefix};
use replica_core::retry::{Policy, Retrying};
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;

pub(crate) const MIB: u64 = 1 << 20;

/// How many puts or deletes the bulk helpers keep in flight.
pub(crate) const PARALLEL: usize = 32;

pub(crate) fn variant(e: &StoreError) -> &'static str {
    match e {
        StoreError::NotFound { .. } => "NotFound",
        StoreError::AlreadyExists { .. } => "AlreadyExists",
        StoreError::Conflict { .. } => "Conflict",
        StoreError::Fenced { .. } => "Fenced",
        StoreError::PermissionDenied { .. } => "PermissionDenied",
        StoreError::Transient { .. } => "Transient",
        StoreError::Throttled { .. } => "Throttled",
        StoreError::InvalidUrl { .. } => "InvalidUrl",
        StoreError::InvalidKey { .. } => "InvalidKey",
        StoreError::Unsupported { .. } => "Unsupported",
        StoreError::Other { .. } => "Other",
    }
}

/// A key the case chose; the suite only uses valid ones.
pub(crate) fn key(k: &str) -> Key {
    Key::new(k).unwrap_or_else(|e| panic!("internal: the case uses an invalid key: {e}"))
}

pub(crate) fn keys(ks: &[String]) -> Vec<Key> {
    ks.iter().map(|k| key(k)).collect()
}

pub(crate) fn prefix(p: &str) -> KeyPrefix {
    KeyPrefix::new(p).unwrap_or_else(|e| panic!("internal: the case uses an invalid prefix: {e}"))
}

/// `message [Variant]`.
pub(crate) fn describe(e: &StoreError) -> String {
    format!("{} [{}]", Chain(e), variant(e))
}

pub(crate) fn overwrite() -> PutOptions {
    PutOptions::default()
}

pub(crate) fn create_only() -> PutOptions {
    PutOptions {
        mode: PutMode::CreateOnly,
        timestamp: None,
    }
}

pub(crate) fn with_timestamp(mode: PutMode, ts: SystemTime) -> PutOptions {
    PutOptions {
        mode,
        timestamp: Some(ts),
    }
}

pub(crate) fn payload(data: &[u8]) -> Payload {
    Payload::Bytes(Bytes::copy_from_slice(data))
}

/// `t` in milliseconds as a store of `precision` keeps it (truncated).
pub(crate) fn stored_ms(precision: std::time::Duration, t: SystemTime) -> i128 {
    let p = precision.as_millis().max(1) as i128;
    unix_ms(t).div_euclid(p) * p
}

pub(crate) fn unix_ms(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i128,
        Err(e) => -(e.duration().as_millis() as i128),
    }
}

/// A time the store chose itself must be plausible: within a day of our clock (which
/// allows for skew, and catches zero, seconds-as-milliseconds and the like).
pub(crate) fn assert_recent(created: Option<SystemTime>, what: &str) {
    let created = created.unwrap_or_else(|| panic!("{what}: no time"));
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    assert!(
        created > now - day && created < now + day,
        "{what}: created is {created:?}, not within a day of now ({now:?})"
    );
}

/// The client plus checked operations.
pub(crate) struct Store {
    pub(crate) c: Arc<dyn ReplicaClient>,
}

impl Store {
    /// The client as the registry hands it out: behind the one retry policy, so
    /// that a case sees what replication and restore see (an emulator that resets a
    /// kept-alive connection costs a resend, not a failed case). Errors that are not
    /// transient pass through unchanged, so their translation is still what is tested.
    pub(crate) fn new(c: Arc<dyn ReplicaClient>) -> Self {
        Self {
            c: Arc::new(Retrying::new(c, Policy::REQUEST)),
        }
    }

    /// Asserts the client starts empty: the factory must root each client at a fresh
    /// prefix, or cases would see each other's (or earlier runs') objects.
    pub(crate) async fn assert_fresh(&self) {
        let found = self.keys("", None).await;
        assert!(
            found.is_empty(),
            "the client factory must return a client rooted at a fresh, empty prefix, but \
             {} already holds {} objects (first: {:?})",
            self.c.info().redacted_url,
            found.len(),
            found.first()
        );
    }

    pub(crate) async fn put(&self, key: &str, body: Payload, opts: &PutOptions) {
        if let Err(e) = self.c.put(&self::key(key), body, opts).await {
            panic!("put {key:?} ({:?}) failed: {}", opts.mode, describe(&e));
        }
    }

    pub(crate) async fn put_bytes(&self, key: &str, data: &[u8]) {
        self.put(key, payload(data), &overwrite()).await;
    }

    pub(crate) async fn try_get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Vec<u8>, StoreError> {
        let mut stream = self.c.get(&self::key(key), range.clone()).await?;
        let mut out = Vec::new();
        if let Err(e) = stream.read_to_end(&mut out).await {
            panic!("reading the body of {key:?} (range {range:?}) failed: {e}");
        }
        Ok(out)
    }

    pub(crate) async fn get(&self, key: &str, range: Option<Range<u64>>) -> Vec<u8> {
        match self.try_get(key, range.clone()).await {
            Ok(v) => v,
            Err(e) => panic!("get {key:?} (range {range:?}) failed: {}", describe(&e)),
        }
    }

    pub(crate) async fn head(&self, key: &str) -> ObjectInfo {
        let info = match self.c.head(&self::key(key)).await {
            Ok(info) => info,
            Err(e) => panic!("head {key:?} failed: {}", describe(&e)),
        };
        assert_eq!(info.key, key, "head {key:?} returned another key");
        info
    }

    /// Lists, checking what every listing must satisfy whatever the case: strictly
    /// increasing keys, each starting with `prefix` and sorting after `start_after`.
    pub(crate) async fn list(&self, prefix: &str, after: Option<&str>) -> Vec<ObjectInfo> {
        let infos = match self.c.list(&self::prefix(prefix), after).await {
            Ok(v) => v,
            Err(e) => panic!(
                "list prefix {prefix:?} start_after {after:?} failed: {}",
                describe(&e)
            ),
        };
        for (i, info) in infos.iter().enumerate() {
            assert!(
                info.key.starts_with(prefix),
                "list prefix {prefix:?} returned {:?}, which lacks the prefix",
                info.key
            );
            if let Some(after) = after {
                assert!(
                    info.key.as_str() > after,
                    "list prefix {prefix:?} start_after {after:?} returned {:?}, which does \
                     not sort after it",
                    info.key
                );
            }
            if i > 0 {
                let prev = &infos[i - 1].key;
                assert!(
                    prev < &info.key,
                    "list prefix {prefix:?} start_after {after:?} is not in strictly \
                     increasing byte order: {prev:?} then {:?}",
                    info.key
                );
            }
        }
        infos
    }

    pub(crate) async fn keys(&self, prefix: &str, after: Option<&str>) -> Vec<String> {
        self.list(prefix, after)
            .await
            .into_iter()
            .map(|o| o.key)
            .collect()
    }

    pub(crate) async fn delete(&self, keys: &[String]) {
        if let Err(e) = self.c.delete_many(&self::keys(keys)).await {
            panic!(
                "delete_many of {} keys (first {:?}) failed: {}",
                keys.len(),
                keys.first(),
                describe(&e)
            );
        }
    }

    pub(crate) async fn assert_not_found(&self, key: &str, what: &str) {
        match self.c.head(&self::key(key)).await {
            Err(StoreError::NotFound { key: k }) => {
                assert_eq!(k, key, "{what}: NotFound names another key")
            }
            Err(e) => panic!(
                "{what}: head {key:?} should fail with NotFound, got {}",
                describe(&e)
            ),
            Ok(info) => panic!("{what}: head {key:?} should fail with NotFound, got {info:?}"),
        }
    }

    /// Deletes everything the case left, so runs against real buckets leave no litter,
    /// and checks that this worked. Only reached when the case passed; a failing case
    /// leaves its objects for inspection.
    pub(crate) async fn cleanup(&self) {
        let keys = self.keys("", None).await;
        for chunk in keys.chunks(2_000) {
            self.delete(chunk).await;
        }
        let left = self.keys("", None).await;
        assert!(
            left.is_empty(),
            "after deleting every listed key, {} remain (first {:?})",
            left.len(),
            left.first()
        );
    }

    /// Puts every `(key, body)` with at most [`PARALLEL`] puts in flight.
    pub(crate) async fn put_many(&self, items: Vec<(String, Bytes)>) {
        let mut set = JoinSet::new();
        for (key, body) in items {
            while set.len() >= PARALLEL {
                join_put(&mut set).await;
            }
            let c = self.c.clone();
            set.spawn(async move {
                let res = c
                    .put(&self::key(&key), Payload::Bytes(body), &overwrite())
                    .await;
                (key, res)
            });
        }
        while !set.is_empty() {
            join_put(&mut set).await;
        }
    }
}

async fn join_put(set: &mut JoinSet<(String, Result<(), StoreError>)>) {
    match set.join_next().await {
        Some(Ok((_, Ok(())))) | None => {}
        Some(Ok((key, Err(e)))) => panic!("put {key:?} failed: {}", describe(&e)),
        Some(Err(e)) => resume(e),
    }
}

/// Re-raises a task's panic on the case's own thread so its message is the failure.
/// Runs `n` futures made by `make`, released together by a barrier so that they race,
/// and returns their outputs in order.
pub(crate) async fn race<T, Fut>(n: usize, make: impl Fn(usize) -> Fut) -> Vec<T>
where
    T: Send + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (barrier, fut) = (barrier.clone(), make(i));
            tokio::spawn(async move {
                barrier.wait().await;
                fut.await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| resume(e)));
    }
    out
}

pub(crate) fn resume(e: tokio::task::JoinError) -> ! {
    match e.try_into_panic() {
        Ok(payload) => std::panic::resume_unwind(payload),
        Err(e) => panic!("task failed: {e}"),
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `buf` with the bytes at `offset..` of the pattern named by `seed`. Any byte of
/// the pattern can be computed on its own, so received data is checked as it streams.
pub(crate) fn fill_pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut pos = offset;
    let mut i = 0;
    while i < buf.len() {
        let word = splitmix64(seed ^ splitmix64(pos / 8)).to_le_bytes();
        let within = (pos % 8) as usize;
        let n = (8 - within).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&word[within..within + n]);
        i += n;
        pos += n as u64;
    }
}

pub(crate) fn pattern(seed: u64, range: Range<u64>) -> Vec<u8> {
    let mut v = vec![0u8; (range.end - range.start) as usize];
    fill_pattern(seed, range.start, &mut v);
    v
}

/// Writes `len` bytes of pattern `seed` to `dir/name`.
pub(crate) fn write_pattern_file(dir: &Path, name: &str, seed: u64, len: u64) -> PathBuf {
    let path = dir.join(name);
    let file =
        std::fs::File::create(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    let mut w = std::io::BufWriter::with_capacity(MIB as usize, file);
    let mut buf = vec![0u8; MIB as usize];
    let mut written = 0;
    while written < len {
        let n = (len - written).min(MIB) as usize;
        fill_pattern(seed, written, &mut buf[..n]);
        w.write_all(&buf[..n])
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        written += n as u64;
    }
    w.flush()
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// Streams `key` (or `range` of it) and compares it, read by read, with pattern `seed`
/// over `expect`; reports the first differing offset.
pub(crate) async fn verify_pattern(
    store: &Store,
    key: &str,
    range: Option<Range<u64>>,
    seed: u64,
    expect: Range<u64>,
) {
    let mut stream = match store.c.get(&self::key(key), range.clone()).await {
        Ok(s) => s,
        Err(e) => panic!("get {key:?} (range {range:?}) failed: {}", describe(&e)),
    };
    let mut got = vec![0u8; 256 * 1024];
    let mut want = vec![0u8; 256 * 1024];
    let mut pos = expect.start;
    loop {
        let n = match stream.read(&mut got).await {
            Ok(n) => n,
            Err(e) => panic!("reading {key:?} at offset {pos} failed: {e}"),
        };
        if n == 0 {
            break;
        }
        assert!(
            pos + n as u64 <= expect.end,
            "{key:?} (range {range:?}) is longer than the {} bytes expected",
            expect.end - expect.start
        );
        fill_pattern(seed, pos, &mut want[..n]);
        if got[..n] != want[..n] {
            let at = got[..n]
                .iter()
                .zip(&want[..n])
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!(
                "{key:?} (range {range:?}) differs from what was put at object offset {}",
                pos + at as u64
            );
        }
        pos += n as u64;
    }
    assert_eq!(
        pos,
        expect.end,
        "{key:?} (range {range:?}) ended early: {} of {} bytes",
        pos - expect.start,
        expect.end - expect.start
    );
}
