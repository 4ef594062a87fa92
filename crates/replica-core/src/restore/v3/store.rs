//! Every object-store call the 0.3 reader makes, in one place: one LIST of
//! `generations/` and a GET per object (streamed, or fetched into memory or a file).
//!
//! 0.3 wrote no metadata: an object's time is the store's modification time
//! (LastModified, a file's mtime), which is what 0.3 itself restores by.

use std::collections::BTreeMap;
use std::time::SystemTime;

use tracing::debug;

use super::V3Error;
use super::layout::{self, GENERATIONS_PREFIX, GenerationId, ObjectName};
use crate::client::{ByteStream, ReplicaClient};
use crate::error::{Op, StoreError};
use crate::key::{Key, KeyPrefix};

/// One snapshot of a generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub index: u32,
    pub key: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// One WAL segment: the bytes of WAL file `index` from `offset` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub index: u32,
    pub offset: u32,
    pub key: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// What one generation holds, snapshots by index and segments by (index, offset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Generation {
    pub snapshots: Vec<Snapshot>,
    pub segments: Vec<Segment>,
}

impl Generation {
    /// The earliest and latest object times (0.3's "created" and "updated").
    pub fn time_bounds(&self) -> Option<(SystemTime, SystemTime)> {
        let times = self
            .snapshots
            .iter()
            .map(|s| s.modified)
            .chain(self.segments.iter().map(|s| s.modified));
        times.fold(None, |acc, t| match acc {
            None => Some((t, t)),
            Some((lo, hi)) => Some((lo.min(t), hi.max(t))),
        })
    }
}

/// Every 0.3 generation at the replica root, by name.
pub type Listing = BTreeMap<GenerationId, Generation>;

/// Lists the 0.3 objects under the replica root (one LIST, plus paging).
pub async fn list(client: &dyn ReplicaClient) -> Result<Listing, V3Error> {
    let mut out = Listing::new();
    let prefix = KeyPrefix::new(GENERATIONS_PREFIX)?;
    for obj in client.list(&prefix, None).await? {
        let Some(name) = layout::parse_key(&obj.key) else {
            debug!(key = %obj.key, "not a Litestream 0.3 object; skipped");
            continue;
        };
        // 0.3 dates its objects by the store's clock (a file's mtime, which file-like
        // backends report as the LTX time, since it is where Litestream 0.5 keeps it).
        let modified =
            obj.last_modified
                .or(obj.ltx_time)
                .ok_or_else(|| V3Error::NoModificationTime {
                    key: obj.key.clone(),
                })?;
        match name {
            ObjectName::Snapshot { generation, index } => {
                out.entry(generation).or_default().snapshots.push(Snapshot {
                    index,
                    key: obj.key,
                    size: obj.size,
                    modified,
                });
            }
            ObjectName::WalSegment {
                generation,
                index,
                offset,
            } => {
                out.entry(generation).or_default().segments.push(Segment {
                    index,
                    offset,
                    key: obj.key,
                    size: obj.size,
                    modified,
                });
            }
        }
    }
    for g in out.values_mut() {
        g.snapshots.sort_by_key(|s| s.index);
        g.segments.sort_by_key(|s| (s.index, s.offset));
    }
    Ok(out)
}

/// A downloaded object: small ones stay in memory (0.3 writes one small object per
/// sync, and a file apiece costs more than the bytes), large ones go to a file.
#[derive(Debug)]
pub enum Fetched {
    Memory(Vec<u8>),
    File(std::path::PathBuf),
}

/// Objects up to this size are fetched into memory.
pub const IN_MEMORY_MAX: u64 = 8 << 20;

/// Downloads one object (its compressed bytes); returns it and the byte count.
pub async fn fetch(
    client: &dyn ReplicaClient,
    key: &str,
    size: u64,
    path: &std::path::Path,
) -> Result<(Fetched, u64), V3Error> {
    let stream = client.get(&Key::new(key)?, None).await?;
    let mut stream = tokio::io::BufReader::with_capacity(1 << 16, stream);
    let get_err = |e| V3Error::from(StoreError::from_io(Op::Get, key, e));
    if size <= IN_MEMORY_MAX {
        let mut buf = Vec::with_capacity(size as usize);
        let n = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut buf)
            .await
            .map_err(get_err)?;
        return Ok((Fetched::Memory(buf), n as u64));
    }
    let file_err = |source| V3Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = tokio::fs::File::create(path).await.map_err(file_err)?;
    let n = tokio::io::copy_buf(&mut stream, &mut file)
        .await
        .map_err(get_err)?;
    tokio::io::AsyncWriteExt::flush(&mut file)
        .await
        .map_err(file_err)?;
    Ok((Fetched::File(path.to_path_buf()), n))
}

/// Streams one object.
pub async fn get(client: &dyn ReplicaClient, key: &str) -> Result<ByteStream, V3Error> {
    Ok(client.get(&Key::new(key)?, None).await?)
}
