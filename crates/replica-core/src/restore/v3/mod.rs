//! Reading Litestream 0.3 replicas (`generations/<id>/snapshots|wal/…`), so that the
//! history a 0.3 deployment kept stays restorable after moving to LTX.
//!
//! `layout` knows the names, `store` is every object-store call, `plan` applies 0.3's
//! rules for choosing generation, snapshot and WAL segments, and `apply` rebuilds the
//! database. The caller ([`super::restore`]) owns the work directory, the integrity
//! check and the final link, exactly as for LTX restores.

mod apply;
pub mod layout;
pub mod plan;
pub mod store;

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::task::JoinHandle;
use tracing::{debug, info};

pub use layout::GenerationId;
pub use plan::{V3Plan, V3Target, plan};
pub use store::{Generation, Listing, Segment, Snapshot, list};

use super::RestoreError;
use crate::client::ReplicaClient;
use crate::error::StoreError;
use crate::remote_read::StreamReader;

#[derive(Debug, thiserror::Error)]
pub enum V3Error {
    #[error(transparent)]
    Store(#[from] StoreError),

    #[error(
        "the store reported no modification time for {key}; Litestream 0.3 objects are placed in time by it"
    )]
    NoModificationTime { key: String },

    #[error("--index needs --generation (a WAL index is only meaningful within one generation)")]
    IndexWithoutGeneration,

    #[error("--index and --timestamp cannot be combined")]
    IndexAndTimestamp,

    #[error(
        "there is no Litestream 0.3 generation {generation} (present: {})",
        list_or_none(available)
    )]
    NoSuchGeneration {
        generation: GenerationId,
        available: Vec<String>,
    },

    #[error("no Litestream 0.3 generation {}", match timestamp {
        Some(ts) => format!("covers {}; `replica generations URL` shows their time ranges", humantime::format_rfc3339_millis(*ts)),
        None => "has any objects".to_string(),
    })]
    NoGenerationAt { timestamp: Option<SystemTime> },

    #[error("generation {prefix} has no usable snapshot: {detail}")]
    NoSnapshot { prefix: String, detail: String },

    #[error("WAL segment {key} is missing: {detail}")]
    MissingSegment { key: String, detail: String },

    #[error("WAL index {want:08x} is not in generation {generation}; it reaches {have:08x}")]
    IndexNotAvailable {
        generation: GenerationId,
        want: u32,
        have: u32,
    },

    #[error("replica object {key} is damaged: {detail}")]
    Corrupt { key: String, detail: String },

    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl V3Error {
    /// Errors in what the user asked for rather than in the replica.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            V3Error::IndexWithoutGeneration
                | V3Error::IndexAndTimestamp
                | V3Error::NoSuchGeneration { .. }
        )
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Builds the database of `plan` at `db_path` (which must not exist), using `work` for
/// large downloads and scratch files. The snapshot is applied as its GET streams in;
/// the WAL segments (one small object per 0.3 sync, often thousands) download
/// `parallelism` ahead while they are applied strictly in order. Returns the
/// compressed bytes downloaded.
pub(super) async fn apply(
    client: &Arc<dyn ReplicaClient>,
    plan: &V3Plan,
    db_path: &Path,
    work: &Path,
    parallelism: usize,
) -> Result<u64, RestoreError> {
    info!(
        generation = %plan.generation,
        snapshot = format!("{:08x}", plan.snapshot.index),
        wal_indexes = plan.wal.len(),
        objects = plan.objects(),
        "restoring from Litestream 0.3 generation"
    );
    let handle = tokio::runtime::Handle::current();
    let (client, plan, db_path, work) = (
        client.clone(),
        plan.clone(),
        db_path.to_path_buf(),
        work.to_path_buf(),
    );
    tokio::task::spawn_blocking(move || {
        let mut window = Window {
            handle: handle.clone(),
            client: client.clone(),
            segments: plan
                .wal
                .iter()
                .flat_map(|(_, s)| s.iter().cloned())
                .collect(),
            work: work.clone(),
            ahead: parallelism.max(1),
            spawned: std::collections::VecDeque::new(),
            next: 0,
        };
        let r = apply_blocking(
            &handle,
            client.as_ref(),
            &plan,
            &db_path,
            &work,
            &mut window,
        );
        // Stop the downloads still running and wait for them: one still writing a
        // file would race the removal of the work directory.
        for d in &window.spawned {
            d.abort();
        }
        for d in window.spawned.drain(..) {
            let _ = handle.block_on(d);
        }
        r
    })
    .await
    .map_err(|e| RestoreError::Task(e.to_string()))?
}

/// The WAL segments downloading ahead of the one being applied: at most `ahead` at a
/// time (in memory when small), started in order as the applier moves on.
struct Window {
    handle: tokio::runtime::Handle,
    client: Arc<dyn ReplicaClient>,
    segments: Vec<Segment>,
    work: PathBuf,
    ahead: usize,
    spawned: std::collections::VecDeque<JoinHandle<Result<(store::Fetched, u64), V3Error>>>,
    next: usize,
}

impl Window {
    fn fill(&mut self) {
        while self.spawned.len() < self.ahead && self.next < self.segments.len() {
            let (client, seg, path) = (
                self.client.clone(),
                self.segments[self.next].clone(),
                download_path(&self.work, self.next),
            );
            self.spawned.push_back(self.handle.spawn(async move {
                store::fetch(client.as_ref(), &seg.key, seg.size, &path).await
            }));
            self.next += 1;
        }
    }

    /// The next segment's download, in order.
    fn take(&mut self) -> Result<(store::Fetched, u64), RestoreError> {
        self.fill();
        let d = self
            .spawned
            .pop_front()
            .ok_or_else(|| RestoreError::Task("a WAL segment was not downloaded".into()))?;
        self.fill();
        Ok(self
            .handle
            .block_on(d)
            .map_err(|e| RestoreError::Task(e.to_string()))??)
    }
}

fn download_path(work: &Path, i: usize) -> PathBuf {
    work.join(format!("{i:06}.wal.lz4"))
}

/// Opens one object as a blocking reader of its decompressed bytes.
fn open(
    handle: &tokio::runtime::Handle,
    client: &dyn ReplicaClient,
    key: &str,
) -> Result<apply::Lz4Object<BufReader<StreamReader>>, V3Error> {
    let stream = handle.block_on(store::get(client, key))?;
    let _entered = handle.enter();
    let reader = StreamReader::new(stream, key, None);
    Ok(apply::Lz4Object::new(BufReader::with_capacity(
        1 << 20,
        reader,
    )))
}

fn corrupt(key: &str, e: &std::io::Error) -> V3Error {
    V3Error::Corrupt {
        key: key.to_owned(),
        detail: e.to_string(),
    }
}

fn apply_blocking(
    handle: &tokio::runtime::Handle,
    client: &dyn ReplicaClient,
    plan: &V3Plan,
    db_path: &Path,
    work: &Path,
    window: &mut Window,
) -> Result<u64, RestoreError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| V3Error::Io { path, source }
    };
    let db = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(db_path)
        .map_err(io_err(db_path))?;
    let mut total = 0u64;

    // The first segments download while the snapshot streams in.
    window.fill();
    let key = plan.snapshot.key.as_str();
    let mut obj = open(handle, client, key)?;
    let page_size = match apply::apply_snapshot(&mut obj, key, &db, db_path)? {
        Ok(ps) => ps,
        // A broken GET is the store's failure; anything else is the object's.
        Err(e) => {
            return Err(match obj.into_inner().into_inner().take_error() {
                Some(get) => V3Error::from(get),
                None => corrupt(key, &e),
            }
            .into());
        }
    };
    total += obj.compressed_bytes();
    debug!(key, page_size, "snapshot applied");

    let scratch = work.join("wal-pending");
    for (index, segments) in &plan.wal {
        let mut replay = apply::WalReplay::new(
            plan.generation,
            *index,
            &db,
            db_path,
            page_size,
            scratch.clone(),
        )?;
        for seg in segments {
            let (fetched, n) = window.take()?;
            total += n;
            let applied = match &fetched {
                store::Fetched::Memory(bytes) => {
                    let mut obj = apply::Lz4Object::new(&bytes[..]);
                    replay.segment(seg, &mut obj)?
                }
                store::Fetched::File(path) => {
                    let file = std::fs::File::open(path).map_err(io_err(path))?;
                    let mut obj = apply::Lz4Object::new(BufReader::with_capacity(1 << 20, file));
                    let r = replay.segment(seg, &mut obj)?;
                    // Free the space early on big restores.
                    let _ = std::fs::remove_file(path);
                    r
                }
            };
            if let Err(e) = applied {
                return Err(corrupt(&seg.key, &e).into());
            }
        }
        replay.finish()?;
        debug!(
            index = format!("{index:08x}"),
            segments = segments.len(),
            "WAL index applied"
        );
    }
    db.sync_all().map_err(io_err(db_path))?;
    Ok(total)
}
