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

use tracing::{debug, info};

pub use layout::GenerationId;
pub use plan::{V3Plan, V3Target, plan};
pub use store::{Generation, Listing, Segment, Snapshot, list};

use super::{RestoreError, StreamReader};
use crate::client::ReplicaClient;
use crate::error::{Op, StoreError};

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

    #[error("{path}: {source}")]
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
/// scratch files. Returns the compressed bytes downloaded.
pub(super) async fn apply(
    client: &Arc<dyn ReplicaClient>,
    plan: &V3Plan,
    db_path: &Path,
    work: &Path,
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
        apply_blocking(&handle, client.as_ref(), &plan, &db_path, &work)
    })
    .await
    .map_err(|e| RestoreError::Task(e.to_string()))?
}

/// Opens one object as a blocking reader of its decompressed bytes.
fn open(
    handle: &tokio::runtime::Handle,
    client: &dyn ReplicaClient,
    key: &str,
) -> Result<apply::Lz4Object<BufReader<StreamReader>>, V3Error> {
    let stream = handle.block_on(store::get(client, key))?;
    let reader = StreamReader {
        handle: handle.clone(),
        stream,
        bytes: 0,
        error: None,
    };
    Ok(apply::Lz4Object::new(
        BufReader::with_capacity(1 << 20, reader),
        key,
    ))
}

/// A read that failed: the GET broke (a store error), or the bytes are damaged.
fn read_failure(
    obj: apply::Lz4Object<BufReader<StreamReader>>,
    key: &str,
    e: std::io::Error,
) -> V3Error {
    match obj.into_inner().into_inner().error {
        Some(get) => StoreError::from_io(Op::Get, key, get).into(),
        None => V3Error::Corrupt {
            key: key.to_owned(),
            detail: e.to_string().replace(&format!("{key}: "), ""),
        },
    }
}

fn apply_blocking(
    handle: &tokio::runtime::Handle,
    client: &dyn ReplicaClient,
    plan: &V3Plan,
    db_path: &Path,
    work: &Path,
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

    let key = plan.snapshot.key.as_str();
    let mut obj = open(handle, client, key)?;
    let page_size = match apply::apply_snapshot(&mut obj, key, &db, db_path)? {
        Ok(ps) => ps,
        Err(e) => return Err(read_failure(obj, key, e).into()),
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
            let mut obj = open(handle, client, &seg.key)?;
            if let Err(e) = replay.segment(seg, &mut obj)? {
                return Err(read_failure(obj, &seg.key, e).into());
            }
            total += obj.compressed_bytes();
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
