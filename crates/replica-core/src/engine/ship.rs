//! The shipper: uploads spooled LTX files in TXID order, at most one L0 upload per
//! sync interval. Files that piled up (a burst, an outage) are merged into one L0
//! object covering their whole TXID range, so catching up costs one request per
//! interval rather than one per file.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{debug, info, warn};

use super::spool::{Pending, Spool};
use super::{EngineConfig, EngineError, Shared};
use crate::layout::{FileId, SNAPSHOT_LEVEL, TxRange};
use crate::ltx::{self, HEADER_SIZE, Header};
use crate::replica::Replica;

const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub async fn run(
    spool: Spool,
    replica: Replica,
    cfg: EngineConfig,
    shared: Arc<Shared>,
) -> Result<(), EngineError> {
    let mut backoff = Duration::from_millis(250);
    let mut last_upload: Option<Instant> = None;
    let mut failing = false;
    loop {
        let capture_done = shared.capture_done.load(Ordering::Acquire);
        let stopping = shared.stop.load(Ordering::Acquire);
        let mut pending = spool.pending()?;
        // An L0 the replica already covers was uploaded by a run that died before
        // removing it; uploading it again would only add an overlapping object.
        let uploaded = shared.stats.uploaded_txid.load(Ordering::Relaxed);
        for p in pending.extract_if(.., |p| {
            p.id.level != SNAPSHOT_LEVEL && p.id.range.max <= uploaded
        }) {
            spool.remove(&p)?;
        }
        if pending.is_empty() {
            if capture_done {
                return Ok(());
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), shared.ship.notified()).await;
            continue;
        }
        // Pace L0 uploads to one per interval; a flush at shutdown does not wait.
        if let Some(t) = last_upload {
            let next = t + cfg.sync_interval;
            let now = Instant::now();
            if !stopping && next > now && pending[0].id.level != SNAPSHOT_LEVEL {
                let _ = tokio::time::timeout(next - now, async {
                    while !shared.stop.load(Ordering::Acquire) {
                        shared.ship.notified().await;
                    }
                })
                .await;
                continue;
            }
        }
        match upload_next(&spool, &replica, &pending, &cfg, &shared).await {
            Ok(()) => {
                if failing {
                    info!(url = %replica.url(), "uploads recovered");
                    failing = false;
                }
                backoff = Duration::from_millis(250);
                last_upload = Some(Instant::now());
            }
            Err(e) => {
                shared.stats.upload_errors.fetch_add(1, Ordering::Relaxed);
                warn!(url = %replica.url(), error = %e, retry_in_ms = backoff.as_millis() as u64, spooled_files = pending.len(), "upload failed; keeping files in the spool");
                failing = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
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

fn timestamp(h: &Header) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(h.timestamp_ms.max(0) as u64)
}

/// Uploads the next snapshot, or the leading run of L0 files merged into one object.
async fn upload_next(
    spool: &Spool,
    replica: &Replica,
    pending: &[Pending],
    cfg: &EngineConfig,
    shared: &Shared,
) -> Result<(), EngineError> {
    let first = &pending[0];
    let mut group: Vec<&Pending> = vec![first];
    if first.id.level != SNAPSHOT_LEVEL {
        let mut bytes = std::fs::metadata(&first.path).map(|m| m.len()).unwrap_or(0);
        for p in &pending[1..] {
            let last = group[group.len() - 1];
            if p.id.level == SNAPSHOT_LEVEL || p.id.range.min != last.id.range.max + 1 {
                break;
            }
            bytes += std::fs::metadata(&p.path).map(|m| m.len()).unwrap_or(0);
            if bytes > cfg.max_upload_bytes {
                break;
            }
            group.push(p);
        }
    }

    let (id, path, header, merged) = if group.len() == 1 {
        (
            first.id,
            first.path.clone(),
            read_header(&first.path)?,
            false,
        )
    } else {
        let inputs: Vec<_> = group.iter().map(|p| p.path.clone()).collect();
        let out = spool.tmp_path("merge");
        let out2 = out.clone();
        let header = tokio::task::spawn_blocking(move || -> Result<Header, EngineError> {
            let io = |path: &std::path::Path| {
                let path = path.to_path_buf();
                move |source| EngineError::Io { path, source }
            };
            let mut readers = Vec::new();
            for p in &inputs {
                readers.push(BufReader::new(File::open(p).map_err(io(p))?));
            }
            let w = BufWriter::new(File::create(&out2).map_err(io(&out2))?);
            let (w, header, _) =
                ltx::compact(readers, w).map_err(|e| io(&out2)(std::io::Error::other(e)))?;
            w.into_inner()
                .map_err(|e| io(&out2)(e.into_error()))?
                .sync_all()
                .map_err(io(&out2))?;
            Ok(header)
        })
        .await
        .map_err(|e| EngineError::Thread("merge", e.to_string()))??;
        let id = FileId {
            level: 0,
            range: TxRange {
                min: header.min_txid,
                max: header.max_txid,
            },
        };
        (id, out, header, true)
    };

    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let result = replica.upload(id, &path, timestamp(&header)).await;
    if merged {
        let _ = std::fs::remove_file(&path);
    }
    result?;
    shared.stats.uploads.fetch_add(1, Ordering::Relaxed);
    shared.stats.upload_bytes.fetch_add(size, Ordering::Relaxed);
    shared
        .stats
        .uploaded_txid
        .fetch_max(id.range.max, Ordering::Relaxed);
    for p in group {
        spool.remove(p)?;
    }
    debug!(file = %id, bytes = size, "uploaded");
    if id.level == SNAPSHOT_LEVEL {
        super::retention::enforce(replica, cfg.retention, &shared.stats).await;
    }
    Ok(())
}
