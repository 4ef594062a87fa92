//! A replica: a [`ReplicaClient`] seen through Litestream's layout, as a set of LTX files.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinSet;

use crate::client::{Payload, PutMode, PutOptions, ReplicaClient};
use crate::error::{Op, StoreError};
use crate::key::Key;
use crate::layout::{FileId, LayoutStyle, TxRange};
use crate::ltx::{TRAILER_SIZE, Trailer};

/// HEADs in flight while filling in LTX times (Litestream batches 50; a restore
/// should not wait on one round trip per file).
const HEAD_CONCURRENCY: usize = 32;

/// How far a writer's clock may run ahead of the store's. An LTX file is stamped before
/// its upload, so its LTX time precedes the store's LastModified by at least the upload
/// time, minus this skew; S3 refuses requests signed more than 15 minutes off its clock,
/// so a working writer is never further off.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);

/// One LTX file present in the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub id: FileId,
    pub key: Key,
    pub size: u64,
    /// The LTX creation time persisted by the writer (Litestream's "CreatedAt"), when
    /// known: from the listing, a HEAD, or our own upload.
    pub ltx_time: Option<SystemTime>,
    /// The store's time of the upload, when the listing gave it.
    pub last_modified: Option<SystemTime>,
}

impl RemoteFile {
    /// The file's time for planning and retention: the LTX time, or the upload time
    /// where the store keeps none (files written without one, as Litestream does).
    pub fn time(&self) -> Option<SystemTime> {
        self.ltx_time.or(self.last_modified)
    }

    /// Whether an upload time alone proves the LTX time is before `t`.
    fn surely_before(&self, t: SystemTime) -> bool {
        self.last_modified
            .and_then(|m| m.checked_add(MAX_CLOCK_SKEW))
            .is_some_and(|m| m < t)
    }
}

#[derive(Debug, Clone)]
pub struct Replica {
    client: Arc<dyn ReplicaClient>,
    style: LayoutStyle,
}

impl Replica {
    pub fn new(client: Arc<dyn ReplicaClient>) -> Self {
        let style = client.info().layout;
        Self { client, style }
    }

    pub fn client(&self) -> &Arc<dyn ReplicaClient> {
        &self.client
    }

    pub fn url(&self) -> &str {
        &self.client.info().redacted_url
    }

    pub fn key(&self, id: FileId) -> Key {
        self.style.key(id)
    }

    /// Lists the LTX files of one level (or all levels), in (level, TXID) order.
    /// Objects that are not LTX files of the layout are ignored, as Litestream does.
    /// All levels cost one LIST (plus paging): every level sits below one prefix.
    pub async fn list_files(&self, level: Option<u8>) -> Result<Vec<RemoteFile>, StoreError> {
        let prefix = match level {
            Some(l) => self.style.level_prefix(l),
            None => self.style.levels_prefix(),
        };
        let objects = self.client.list(&prefix, None).await?;
        let mut out = self.files_of(objects, |id| level.is_none_or(|l| l == id.level));
        out.sort_by_key(|f| (f.id.level, f.id.range));
        Ok(out)
    }

    /// The LTX files of the layout among `objects` that `keep` accepts; other objects
    /// are ignored, as Litestream ignores them.
    fn files_of(
        &self,
        objects: Vec<crate::client::ObjectInfo>,
        keep: impl Fn(FileId) -> bool,
    ) -> Vec<RemoteFile> {
        objects
            .into_iter()
            .filter_map(|obj| {
                let id = self.style.parse_key(&obj.key).filter(|id| keep(*id))?;
                Some(RemoteFile {
                    id,
                    key: self.key(id),
                    size: obj.size,
                    ltx_time: obj.ltx_time,
                    last_modified: obj.last_modified,
                })
            })
            .collect()
    }

    /// Lists the files of `level` whose range starts after TXID `after`: one LIST that
    /// starts past every key of a file starting at or before it (keys sort by their
    /// first TXID), however long the level's history.
    pub async fn list_level_after(
        &self,
        level: u8,
        after: u64,
    ) -> Result<Vec<RemoteFile>, StoreError> {
        let after = TxRange {
            min: after,
            max: u64::MAX,
        };
        self.list_level_after_range(level, after).await
    }

    /// Lists the files of `level` whose key sorts after that of a file covering
    /// `after` (by first TXID, then last): one LIST, however long the level's history.
    pub async fn list_level_after_range(
        &self,
        level: u8,
        after: TxRange,
    ) -> Result<Vec<RemoteFile>, StoreError> {
        let prefix = self.style.level_prefix(level);
        let from = self.key(FileId {
            level,
            range: after,
        });
        let objects = self.client.list(&prefix, Some(from.as_str())).await?;
        let mut out = self.files_of(objects, |id| {
            id.level == level && (id.range.min, id.range.max) > (after.min, after.max)
        });
        out.sort_by_key(|f| f.id.range);
        Ok(out)
    }

    /// Fills in the LTX time with HEADs (in parallel) where the listing did not carry
    /// it. With `before`, only files whose upload time leaves it open whether they were
    /// created before that moment are asked about: a point-in-time restore to an hour
    /// ago on S3 HEADs the last hour's files, not the whole window's.
    pub async fn fill_ltx_times(
        &self,
        files: &mut [RemoteFile],
        before: Option<SystemTime>,
    ) -> Result<(), StoreError> {
        if self.client.info().capabilities.list_has_ltx_time {
            return Ok(());
        }
        let wanted: Vec<usize> = files
            .iter()
            .enumerate()
            .filter(|(_, f)| f.ltx_time.is_none())
            .filter(|(_, f)| before.is_none_or(|t| !f.surely_before(t)))
            .map(|(i, _)| i)
            .collect();
        let mut tasks = JoinSet::new();
        let mut next = wanted.into_iter();
        loop {
            while tasks.len() < HEAD_CONCURRENCY {
                let Some(i) = next.next() else { break };
                let client = self.client.clone();
                let key = files[i].key.clone();
                tasks.spawn(async move { (i, client.head(&key).await) });
            }
            let Some(done) = tasks.join_next().await else {
                return Ok(());
            };
            let (i, head) = done.map_err(|e| join_failed(&files[0].key, e))?;
            files[i].ltx_time = head?.ltx_time;
        }
    }

    /// Uploads a local LTX file under its layout key, create-only: every object of
    /// the layout is written once. If the name is taken, the object there must hold
    /// the same database state (the same post-apply checksum: an earlier attempt of
    /// ours whose success we did not see, or an identical compaction); anything else
    /// was written by another replicator, and is [`StoreError::Conflict`].
    /// Returns the uploaded file as the replica now holds it.
    pub async fn upload(
        &self,
        id: FileId,
        path: &Path,
        timestamp: SystemTime,
    ) -> Result<RemoteFile, StoreError> {
        let opts = PutOptions {
            mode: PutMode::CreateOnly,
            timestamp: Some(timestamp),
        };
        let key = self.key(id);
        let payload = Payload::File(path.to_path_buf());
        let size = payload.size().await.map_err(|e| e.into_store(&key))?;
        match self.client.put(&key, payload, &opts).await {
            Ok(()) => {}
            Err(StoreError::AlreadyExists { .. }) => {
                let ours = local_post_apply_checksum(path)
                    .map_err(|e| StoreError::from_io(Op::Put, &key, e))?;
                if self.post_apply_checksum(&key).await? != ours {
                    return Err(StoreError::Conflict {
                        key: key.to_string(),
                    });
                }
            }
            Err(e) => return Err(e),
        }
        Ok(RemoteFile {
            id,
            key,
            size,
            ltx_time: Some(timestamp),
            last_modified: None,
        })
    }

    /// The post-apply checksum in the trailer of the object at `key` (a HEAD and a
    /// ranged GET of the trailer).
    async fn post_apply_checksum(&self, key: &Key) -> Result<Option<u64>, StoreError> {
        use tokio::io::AsyncReadExt;
        let size = self.client.head(key).await?.size;
        let Some(start) = size.checked_sub(TRAILER_SIZE as u64) else {
            return Ok(None);
        };
        let mut body = self.client.get(key, Some(start..size)).await?;
        let mut trailer = [0u8; TRAILER_SIZE];
        match body.read_exact(&mut trailer).await {
            Ok(_) => Ok(Some(Trailer::from_bytes(&trailer).post_apply_checksum)),
            Err(e) => Err(StoreError::body_broken(Op::Get, key, e)),
        }
    }
}

fn local_post_apply_checksum(path: &Path) -> std::io::Result<Option<u64>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let Some(start) = f.metadata()?.len().checked_sub(TRAILER_SIZE as u64) else {
        return Ok(None);
    };
    let mut trailer = [0u8; TRAILER_SIZE];
    f.read_exact_at(&mut trailer, start)?;
    Ok(Some(Trailer::from_bytes(&trailer).post_apply_checksum))
}

fn join_failed(key: &Key, e: tokio::task::JoinError) -> StoreError {
    if e.is_panic() {
        std::panic::resume_unwind(e.into_panic());
    }
    StoreError::Other {
        op: Op::Head,
        key: key.to_string(),
        source: Box::new(e),
    }
}
