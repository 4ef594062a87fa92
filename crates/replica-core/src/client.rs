//! The object-store seam: everything the engine and restore need from a backend.
//!
//! Keys are relative to the replica root given in the URL (`file:///backups/db` has
//! root `/backups/db`; key `ltx/0/…` lives below it) and always use `/`.

use std::fmt::Debug;
use std::ops::Range;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncRead;

use crate::error::StoreError;
use crate::file_mode::FileMode;
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
    /// The creation time persisted at put (see [`PutOptions::timestamp`]), or the
    /// store's own modification time when none was persisted.
    pub created: Option<SystemTime>,
}

/// What a backend can do; the conformance suite skips (and says so) what is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Create-only puts are atomic under a race.
    pub create_only: bool,
    /// `get` honours byte ranges without reading the whole object.
    pub ranged_get: bool,
    /// `list` returns the persisted creation time, so timestamp restore needs no `head`.
    pub list_has_created: bool,
}

pub type ByteStream = Pin<Box<dyn AsyncRead + Send>>;

#[async_trait]
pub trait ReplicaClient: Debug + Send + Sync {
    /// The backend's name (`file`, `s3`, …).
    fn kind(&self) -> &'static str;

    /// The replica URL with any secret removed, for logs and error messages.
    fn redacted_url(&self) -> String;

    fn capabilities(&self) -> Capabilities;

    /// The resolution at which the store keeps [`PutOptions::timestamp`]: SFTP keeps
    /// file times in whole seconds (as Litestream's SFTP replicas do), the others the
    /// millisecond of the LTX header.
    fn timestamp_precision(&self) -> std::time::Duration {
        std::time::Duration::from_millis(1)
    }

    /// Which of Litestream's two key layouts this backend uses.
    fn layout_style(&self) -> LayoutStyle {
        LayoutStyle::LtxDir
    }

    /// The permission bits of the replicated database, set by the engine when it
    /// starts and when the database file is replaced. Backends that create files and
    /// directories (file, SFTP) give them [`FileMode::file`] and [`FileMode::dir`] bits
    /// from then on (0600 and 0700 before); object stores have no modes.
    fn set_file_mode(&self, _mode: FileMode) {}

    async fn put(&self, key: &str, body: Payload, opts: &PutOptions) -> Result<(), StoreError>;

    /// Streams the object, or the half-open byte `range` of it.
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream, StoreError>;

    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError>;

    /// Every object whose key starts with `prefix` and sorts after `start_after`, in
    /// lexicographic key order. Paging is the backend's business.
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<ObjectInfo>, StoreError>;

    /// Deletes every key; keys that do not exist are not an error.
    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError>;
}
