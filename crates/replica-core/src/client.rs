//! The object-store seam: everything the engine and restore need from a backend.
//!
//! Keys are relative to the replica root given in the URL (`file:///backups/db` has
//! root `/backups/db`; key `ltx/0/…` lives below it) and always use `/`.

use std::fmt::Debug;
use std::ops::Range;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncRead;

use crate::error::StoreError;
use crate::file_mode::FileMode;
use crate::key::{Key, KeyPrefix};
use crate::layout::LayoutStyle;

/// How a put treats an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace whatever is there.
    Overwrite,
    /// Fail with [`StoreError::AlreadyExists`] if the key exists, atomically: of N racing
    /// create-only puts exactly one succeeds.
    CreateOnly,
}

/// The body of a put. Spool files are uploaded from disk so that large snapshots are
/// streamed rather than held in memory.
#[derive(Debug, Clone)]
pub enum Payload {
    Bytes(Bytes),
    File(PathBuf),
}

impl Payload {
    /// The body's length; for a file, its length now (spool files do not change once
    /// written).
    pub async fn size(&self) -> Result<u64, PayloadError> {
        match self {
            Payload::Bytes(b) => Ok(b.len() as u64),
            Payload::File(p) => Ok(tokio::fs::metadata(p)
                .await
                .map_err(|e| self.error(e))?
                .len()),
        }
    }

    /// Exactly `len` bytes from `offset` (a part or chunk of a larger upload). Bytes
    /// are sliced without copying; a file is read, and one that is shorter than asked
    /// is an error rather than a short part.
    pub async fn read_range(&self, offset: u64, len: u64) -> Result<Bytes, PayloadError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let short = |got: usize| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("it holds {got} of the {len} bytes wanted at offset {offset}"),
            )
        };
        match self {
            Payload::Bytes(b) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                let end = usize::try_from(offset.saturating_add(len))
                    .unwrap_or(usize::MAX)
                    .min(b.len());
                if (end - start) as u64 != len {
                    return Err(self.error(short(end - start)));
                }
                Ok(b.slice(start..end))
            }
            Payload::File(p) => {
                let read = async {
                    let mut file = tokio::fs::File::open(p).await?;
                    file.seek(std::io::SeekFrom::Start(offset)).await?;
                    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
                    file.take(len).read_to_end(&mut buf).await?;
                    if buf.len() as u64 != len {
                        return Err(short(buf.len()));
                    }
                    Ok(Bytes::from(buf))
                };
                read.await.map_err(|e| self.error(e))
            }
        }
    }

    /// A failure to read this payload.
    pub fn error(&self, source: std::io::Error) -> PayloadError {
        PayloadError {
            path: match self {
                Payload::Bytes(_) => None,
                Payload::File(p) => Some(p.clone()),
            },
            source,
        }
    }
}

/// A put's body could not be read: a local failure (the spool), not the store's, and
/// not worth retrying.
#[derive(Debug, thiserror::Error)]
#[error("could not read the upload's body{}", match path { Some(p) => format!(" from {}", p.display()), None => String::new() })]
pub struct PayloadError {
    path: Option<PathBuf>,
    source: std::io::Error,
}

impl PayloadError {
    /// This failure as the error of the put of `key`.
    pub fn into_store(self, key: &str) -> StoreError {
        StoreError::Other {
            op: crate::error::Op::Put,
            key: key.to_owned(),
            source: Box::new(self),
        }
    }
}

/// The part (block, chunk) size for a multipart upload of `size` bytes: `min`, or more
/// (whole MiB) if the object would otherwise need more than `max_parts` parts.
pub fn part_size(size: u64, min: u64, max_parts: u64) -> u64 {
    const MIB: u64 = 1024 * 1024;
    let needed = size.div_ceil(max_parts).div_ceil(MIB) * MIB;
    needed.max(min)
}

#[derive(Debug, Clone)]
pub struct PutOptions {
    pub mode: PutMode,
    /// The LTX creation time. Backends persist it the way Litestream does (file mtime,
    /// `litestream-timestamp` metadata, …) so point-in-time restore sees the same time
    /// with either tool.
    pub timestamp: Option<SystemTime>,
}

impl Default for PutOptions {
    fn default() -> Self {
        Self {
            mode: PutMode::Overwrite,
            timestamp: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the replica root.
    pub key: String,
    pub size: u64,
    /// When the store last wrote the object (its own clock: S3's LastModified, a file's
    /// mtime where no LTX time is kept apart from it). Upload time, not commit time.
    pub last_modified: Option<SystemTime>,
    /// The LTX creation time persisted at put ([`PutOptions::timestamp`]), when the
    /// store returned it. Never filled from the store's own clock: point-in-time
    /// restore plans on this time, as Litestream does.
    pub ltx_time: Option<SystemTime>,
}

/// What a backend can do; the conformance suite skips (and says so) what is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Create-only puts are atomic under a race.
    pub create_only: bool,
    /// `get` honours byte ranges without reading the whole object.
    pub ranged_get: bool,
    /// `list` returns [`ObjectInfo::ltx_time`], so timestamp restore needs no `head`.
    pub list_has_ltx_time: bool,
}

/// Everything a caller may need to know about a store, in one value, so that a wrapper
/// forwards one call and cannot silently drop a fact (as defaulted methods allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreInfo {
    /// The URL scheme the backend serves (`file`, `s3`, …).
    pub scheme: &'static str,
    /// The replica URL with any secret removed, for logs and error messages.
    pub redacted_url: String,
    /// Which of Litestream's two key layouts this backend uses.
    pub layout: LayoutStyle,
    /// The resolution at which the store keeps [`PutOptions::timestamp`]: SFTP keeps
    /// file times in whole seconds (as Litestream's SFTP replicas do), the others the
    /// millisecond of the LTX header.
    pub timestamp_precision: Duration,
    pub capabilities: Capabilities,
}

impl StoreInfo {
    /// A store with Litestream's `ltx/<level>/` layout and millisecond timestamps.
    pub fn new(scheme: &'static str, redacted_url: String, capabilities: Capabilities) -> Self {
        Self {
            scheme,
            redacted_url,
            layout: LayoutStyle::LtxDir,
            timestamp_precision: Duration::from_millis(1),
            capabilities,
        }
    }
}

pub type ByteStream = Pin<Box<dyn AsyncRead + Send>>;

/// The token a conditional put compares against: an ETag (S3, Azure), a generation
/// (GCS), a digest of the content (file, SFTP). Opaque to the core; only equality
/// matters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(String);

impl Version {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The version of a store that keeps none (file, SFTP): a digest of the length
    /// and the bytes. Small records that change on every write (the lease carries a
    /// nonce) never repeat a digest by accident.
    pub fn of_content(body: &[u8]) -> Self {
        Self(format!("{:x}-{:016x}", body.len(), crate::ltx::crc64(body)))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A small object read whole, with the version a conditional put can name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub body: Bytes,
    pub version: Version,
}

/// Small records (the lease) are refused above this size by `get_versioned`.
pub const MAX_VERSIONED_LEN: usize = 64 << 10;

/// The compare of a compare-and-swap, for stores that do it themselves (file, SFTP,
/// memory): `expected` must be the `current` version, or both absent.
pub fn check_version(
    key: &str,
    expected: Option<&Version>,
    current: Option<&Version>,
) -> Result<(), StoreError> {
    match (expected, current) {
        (None, None) => Ok(()),
        (Some(e), Some(c)) if e == c => Ok(()),
        (None, Some(_)) => Err(StoreError::AlreadyExists {
            key: key.to_owned(),
        }),
        (Some(_), _) => Err(StoreError::Conflict {
            key: key.to_owned(),
        }),
    }
}

/// A record read by `get_versioned` that is larger than [`MAX_VERSIONED_LEN`].
pub fn record_too_large(key: &str) -> StoreError {
    StoreError::Other {
        op: crate::error::Op::Get,
        key: key.to_owned(),
        source: format!("larger than {MAX_VERSIONED_LEN} bytes, too large for a record").into(),
    }
}

/// A store that answered a conditional request without the version it needs.
pub fn missing_version(op: crate::error::Op, key: &str) -> StoreError {
    StoreError::Other {
        op,
        key: key.to_owned(),
        source: "the store returned no ETag, which a conditional write needs".into(),
    }
}

/// An object store as the core sees it. Implementations translate these calls into
/// their protocol and nothing more: keys arrive validated ([`Key`]), payload sizing and
/// ranges come from [`Payload`], metadata names and the timestamp codec from
/// [`crate::meta`].
#[async_trait]
pub trait ReplicaClient: Debug + Send + Sync {
    fn info(&self) -> &StoreInfo;

    /// The permission bits of the replicated database, set by the engine when it
    /// starts and when the database file is replaced. Backends that create files and
    /// directories (file, SFTP) give them [`FileMode::file`] and [`FileMode::dir`] bits
    /// from then on (0600 and 0700 before); object stores have no modes and ignore it.
    /// Required, not defaulted, so that a wrapper cannot forget to forward it.
    fn set_file_mode(&self, mode: FileMode);

    async fn put(&self, key: &Key, body: Payload, opts: &PutOptions) -> Result<(), StoreError>;

    /// Streams the object, or the half-open byte `range` of it. A range reaching past
    /// the end yields the bytes that exist.
    async fn get(&self, key: &Key, range: Option<Range<u64>>) -> Result<ByteStream, StoreError>;

    async fn head(&self, key: &Key) -> Result<ObjectInfo, StoreError>;

    /// Every object whose key starts with `prefix` and sorts after `start_after`, in
    /// lexicographic key order. Paging is the backend's business.
    async fn list(
        &self,
        prefix: &KeyPrefix,
        start_after: Option<&str>,
    ) -> Result<Vec<ObjectInfo>, StoreError>;

    /// Deletes every key; keys that do not exist are not an error.
    async fn delete_many(&self, keys: &[Key]) -> Result<(), StoreError>;

    /// Reads a small object (at most [`MAX_VERSIONED_LEN`] bytes) whole, with its
    /// current version, in one request, so that the body and the version belong
    /// together.
    async fn get_versioned(&self, key: &Key) -> Result<Versioned, StoreError>;

    /// Compare-and-swap: writes `body` only if the object's current version is
    /// `expected`, or, with `None`, only if the object does not exist. Of N racing
    /// puts naming the same version exactly one succeeds. A mismatch is
    /// [`StoreError::Conflict`] (`AlreadyExists` for `None`), and nothing is written.
    /// Returns the new version.
    ///
    /// A retry after a lost response may be refused because the first attempt
    /// landed; callers resolve that by reading the object back (the lease does, its
    /// body holds a unique nonce), never by resending unconditionally.
    async fn put_if(
        &self,
        key: &Key,
        body: Bytes,
        expected: Option<&Version>,
    ) -> Result<Version, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn part_sizes_stay_within_the_part_limit() {
        assert_eq!(part_size(20 * MIB, 8 * MIB, 10_000), 8 * MIB);
        assert_eq!(part_size(80_000 * MIB, 8 * MIB, 10_000), 8 * MIB);
        assert_eq!(part_size(80_000 * MIB + 1, 8 * MIB, 10_000), 9 * MIB);
        let huge = 5 * 1024 * 1024 * MIB;
        assert!(huge.div_ceil(part_size(huge, 8 * MIB, 10_000)) <= 10_000);
    }

    #[tokio::test]
    async fn payload_ranges_are_exact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("body");
        std::fs::write(&path, b"0123456789").expect("write");
        for body in [
            Payload::Bytes(Bytes::from_static(b"0123456789")),
            Payload::File(path),
        ] {
            assert_eq!(body.size().await.expect("size"), 10);
            assert_eq!(&body.read_range(2, 3).await.expect("range")[..], b"234");
            let e = body.read_range(8, 3).await.expect_err("short");
            assert!(e.to_string().contains("could not read"), "{e}");
        }
    }
}
