//! The shipper: uploads spooled LTX files in TXID order, at most one L0 upload per
//! sync interval. Files that piled up (a burst, an outage) are merged into one L0
//! object covering their whole TXID range, so catching up costs one request per
//! interval rather than one per file. While uploads fail, the pending L0 files are
//! merged in the spool as well, so an outage grows the spool by the pages that
//! changed, not by every commit.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::manifest::Manifest;
use super::status::now_ms;
use super::{EngineConfig, EngineError, Shared};
use crate::error::{Chain, StoreError};
use crate::layout::{FileId, SNAPSHOT_LEVEL};
use crate::ltx::{HEADER_SIZE, Header};
use crate::replica::{RemoteFile, Replica};
use crate::retry::Backoff;
use crate::spool::{self, Durability, Pending, Spool};

const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub struct Shipper {
    pub db: PathBuf,
    pub spool: Spool,
    pub replica: Replica,
    pub cfg: EngineConfig,
    pub shared: Arc<Shared>,
    pub manifest: Arc<Mutex<Manifest>>,
}

pub async fn run(s: Shipper) -> Result<(), EngineError> {
    let Shipper {
        db,
        spool,
        replica,
        cfg,
        shared,
        manifest,
    } = &s;
    let mut backoff = Backoff::new(Duration::from_millis(250), MAX_BACKOFF);
    let mut failing = false;
    let mut over_limit = false;
    // Capture's last signal covers the files up to this TXID: they are sent, in as
    // many uploads as `max_upload_bytes` needs, before anything waits again.
    let mut signalled_to: u64 = 0;
    loop {
        let capture_done = shared.capture_done.load(Ordering::Acquire);
        let stopping = shared.stop.load(Ordering::Acquire);
        // Taken before listing: capture spools a file, then signals, so every file a
        // signal covers is in the listing that follows the swap.
        let signalled = shared.ship_due.swap(false, Ordering::AcqRel);
        let mut pending = spool.pending()?;
        // An L0 the replica already covers was uploaded by a run that died before
        // removing it; uploading it again would only add an overlapping object.
        let uploaded = manifest
            .lock()
            .map_err(|_| poisoned("shipper"))?
            .replica_max();
        let newest_snapshot = pending
            .iter()
            .filter(|p| p.id.level == SNAPSHOT_LEVEL)
            .map(|p| p.id.range.max)
            .max();
        let contained = spool::contained(&pending);
        for p in pending.extract_if(.., |p| {
            (p.id.level != SNAPSHOT_LEVEL && p.id.range.max <= uploaded)
                // A newer snapshot makes an older, unsent one useless.
                || (p.id.level == SNAPSHOT_LEVEL && Some(p.id.range.max) < newest_snapshot)
                || contained.contains(p)
        }) {
            spool.remove(&p)?;
        }
        if signalled && let Some(last) = pending.last() {
            signalled_to = signalled_to.max(last.id.range.max);
        }
        if pending.is_empty() {
            if capture_done {
                return Ok(());
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), shared.ship.notified()).await;
            continue;
        }
        // Capture alone says when to ship (at most once per sync interval, at once
        // after a quiet one), so a busy database costs one upload per interval. A
        // snapshot, the flush at a stop and a retry after a failure do not wait.
        let due = pending[0].id.range.min <= signalled_to
            || stopping
            || pending[0].id.level == SNAPSHOT_LEVEL
            || failing;
        if !due {
            let _ = tokio::time::timeout(cfg.sync_interval, shared.ship.notified()).await;
            continue;
        }
        match upload_next(&s, &pending).await {
            Ok(()) => {
                if failing {
                    info!(url = %replica.url(), "uploads recovered");
                    failing = false;
                }
                if over_limit && spool.pending_bytes() <= cfg.spool_limit {
                    info!(dir = %spool.dir().display(), "spool back under its limit");
                    over_limit = false;
                }
                backoff.reset();
            }
            // Another writer: uploading more could only make it worse.
            Err(EngineError::Store(StoreError::Conflict { key })) => {
                return Err(EngineError::OtherWriter {
                    db: db.clone(),
                    url: replica.url().to_owned(),
                    key,
                });
            }
            Err(e @ EngineError::Store(StoreError::Fenced { lost: true, .. })) => return Err(e),
            Err(e) => {
                shared.stats.upload_errors.fetch_add(1, Ordering::Relaxed);
                shared.stats.errors.record(e.kind());
                if let Ok(mut p) = shared.progress.lock() {
                    p.failing = true;
                }
                let delay = match &e {
                    EngineError::Store(se) => backoff.next(Some(se)),
                    _ => backoff.next(None),
                };
                warn!(url = %replica.url(), error = %Chain(&e), retry_in_ms = delay.as_millis() as u64, spooled_files = pending.len(), "upload failed; keeping files in the spool");
                failing = true;
                if let Err(e) = consolidate(spool, &pending, shared).await {
                    warn!(dir = %spool.dir().display(), error = %Chain(&e), "could not merge spooled files");
                }
                let bytes = spool.pending_bytes();
                if bytes > cfg.spool_limit && !over_limit {
                    warn!(dir = %spool.dir().display(), spool_bytes = bytes, limit = cfg.spool_limit, url = %replica.url(), "spool is over its limit because uploads keep failing; captured changes are kept (merged) until the store is reachable");
                    over_limit = true;
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

pub(super) fn poisoned(who: &'static str) -> EngineError {
    EngineError::Poisoned(who)
}

/// The one way a file enters the replica: uploaded, then recorded in the manifest,
/// which compaction and retention decide from.
pub(super) async fn publish(
    replica: &Replica,
    manifest: &Mutex<Manifest>,
    id: FileId,
    path: &Path,
    header: &Header,
) -> Result<RemoteFile, EngineError> {
    let file = replica.upload(id, path, header.time()).await?;
    manifest
        .lock()
        .map_err(|_| poisoned("upload"))?
        .insert(file.clone());
    Ok(file)
}

fn read_header(path: &std::path::Path) -> Result<Header, EngineError> {
    let io = |source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut b = [0u8; HEADER_SIZE];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(io)?;
    Header::from_bytes(&b).map_err(|e| io(std::io::Error::other(e)))
}

/// The leading run of contiguous L0 files, at most `max_bytes` (but at least one).
fn leading_run<'a>(pending: &'a [Pending], max_bytes: u64, shared: &Shared) -> Vec<&'a Pending> {
    let first = &pending[0];
    let mut group: Vec<&Pending> = vec![first];
    if first.id.level == SNAPSHOT_LEVEL {
        return group;
    }
    let boundaries = shared
        .boundaries
        .lock()
        .map(|b| b.clone())
        .unwrap_or_default();
    let mut bytes = file_len(&first.path);
    for p in &pending[1..] {
        let last = group[group.len() - 1];
        if p.id.level == SNAPSHOT_LEVEL
            || p.id.range.min != last.id.range.max + 1
            || boundaries.contains(&last.id.range.max)
        {
            break;
        }
        bytes += file_len(&p.path);
        if bytes > max_bytes {
            break;
        }
        group.push(p);
    }
    group
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Merges `inputs` into a spool scratch file.
async fn merge(
    spool: &Spool,
    inputs: Vec<PathBuf>,
    durability: Durability,
) -> Result<(PathBuf, Header), EngineError> {
    let spool = spool.clone();
    super::off_thread("merge", move || Ok(spool.merge(&inputs, durability)?)).await
}

/// During an outage, merges the leading pending L0 files in place once the files
/// behind the first one weigh as much as it does (or are many): every byte is then
/// rewritten a bounded number of times, and the spool holds roughly one image of
/// the changed pages instead of one file per sync.
async fn consolidate(
    spool: &Spool,
    pending: &[Pending],
    shared: &Shared,
) -> Result<(), EngineError> {
    let group = leading_run(pending, u64::MAX, shared);
    if group.len() < 2 {
        return Ok(());
    }
    let head = file_len(&group[0].path);
    let rest: u64 = group[1..].iter().map(|p| file_len(&p.path)).sum();
    if rest < head && group.len() <= 64 {
        return Ok(());
    }
    // Durable before it replaces its inputs: the only fsync of the spool while
    // replicating, and only during an outage.
    let (merged, header) = merge(
        spool,
        group.iter().map(|p| p.path.clone()).collect(),
        Durability::Now,
    )
    .await?;
    let id = FileId::of(0, &header);
    let inputs: Vec<Pending> = group.into_iter().cloned().collect();
    if let Err(e) = spool.replace_pending(&merged, id, &inputs) {
        spool.discard(&merged);
        return Err(e.into());
    }
    debug!(file = %id, inputs = inputs.len(), "merged spooled files during an outage");
    Ok(())
}

/// Uploads the next snapshot, or the leading run of L0 files merged into one object.
async fn upload_next(s: &Shipper, pending: &[Pending]) -> Result<(), EngineError> {
    let Shipper {
        spool,
        replica,
        cfg,
        shared,
        manifest,
        ..
    } = s;
    let first = &pending[0];
    let group = leading_run(pending, cfg.max_upload_bytes, shared);
    let (id, path, header, merged) = if group.len() == 1 {
        (
            first.id,
            first.path.clone(),
            read_header(&first.path)?,
            false,
        )
    } else {
        let (out, header) = merge(
            spool,
            group.iter().map(|p| p.path.clone()).collect(),
            Durability::Deferred,
        )
        .await?;
        (FileId::of(0, &header), out, header, true)
    };

    let started = std::time::Instant::now();
    let file = match publish(replica, manifest, id, &path, &header).await {
        Ok(f) => f,
        Err(e) => {
            if merged {
                spool.discard(&path);
            }
            return Err(e);
        }
    };
    metrics::histogram!(super::status::histograms::UPLOAD_SECONDS, "db" => s.db.display().to_string())
        .record(started.elapsed().as_secs_f64());
    shared.stats.uploads.fetch_add(1, Ordering::Relaxed);
    shared
        .stats
        .upload_bytes
        .fetch_add(file.size, Ordering::Relaxed);
    let remote = manifest
        .lock()
        .map_err(|_| poisoned("upload"))?
        .replica_max();
    let next_ms = pending
        .get(group.len())
        .and_then(|p| read_header(&p.path).ok())
        .map(|h| h.timestamp_ms);
    if let Ok(mut p) = shared.progress.lock() {
        p.uploaded(remote, next_ms, now_ms());
    }
    if let Ok(mut b) = shared.boundaries.lock() {
        b.retain(|&t| t > remote);
    }
    shared.uploaded.notify_waiters();
    // L0 files stay as local copies until compaction has merged them into L1.
    let keep = id.level == 0 && !cfg.levels.is_empty();
    if keep {
        spool.keep_shipped(&path, id)?;
    } else if merged {
        spool.discard(&path);
    }
    for p in group {
        if !(keep && !merged && p.path == path) {
            spool.remove(p)?;
        }
    }
    if id.level == SNAPSHOT_LEVEL {
        info!(db = %s.db.display(), txid = format!("{:016x}", id.range.max), bytes = file.size, "snapshot uploaded");
    } else {
        debug!(file = %id, bytes = file.size, "uploaded");
    }
    Ok(())
}
