//! Restore: plan a chain of LTX files, download them in parallel, apply them in TXID
//! order to a temporary file, check it, and only then link it into place. The chain's
//! first file (the snapshot: most of the bytes) is applied as it streams in, so a
//! restore writes the database once instead of the snapshot twice.
//!
//! The output path is never written until the database is complete and checked, and
//! an existing file is never replaced: the final step is a hard link, which fails if
//! anything appeared at the output path in the meantime.
//!
//! A replica path may also hold Litestream 0.3 generations (`v3`); they restore
//! through the same work directory, check and link.

mod direct;
mod dry_run;
pub mod follow;
mod plan;
pub mod v3;

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{debug, info};

use direct::AlignedBuf;
pub use dry_run::{DryRun, PlanSummary, PlannedFile, dry_run};
pub use plan::{PlanError, Target, plan};
pub use v3::{V3Error, V3Target};

use crate::error::{Chain, StoreError};
use crate::file_mode::{self, FileMode};
use crate::ltx::{Decoder, Header, LtxError};
use crate::remote_read::{Fetch, StreamReader};
use crate::replica::{RemoteFile, Replica};
use crate::root_record::{self, RootRecordError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntegrityCheck {
    None,
    Quick,
    Full,
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub output: PathBuf,
    pub target: Target,
    /// Downloads in flight at once.
    pub parallelism: usize,
    pub integrity: IntegrityCheck,
    /// An existing output is a no-op instead of an error.
    pub if_db_not_exists: bool,
    /// A replica with no files is a no-op instead of an error.
    pub if_replica_exists: bool,
    /// After a restore of the latest state, record in the database's spool that the
    /// file is the replica's head, so replication resumes without a new snapshot.
    pub seed_spool: bool,
    /// Permission bits of the restored database. `None`: the source database's, as
    /// the replica records them, or 0600 when it does not.
    pub mode: Option<FileMode>,
}

impl RestoreOptions {
    pub fn new(output: impl Into<PathBuf>) -> Self {
        Self {
            output: output.into(),
            target: Target::Latest,
            parallelism: 8,
            integrity: IntegrityCheck::Quick,
            if_db_not_exists: false,
            if_replica_exists: false,
            seed_spool: false,
            mode: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreOutcome {
    Restored {
        /// The last TXID applied.
        txid: u64,
        /// The time of the restore point: the last applied file's LTX time (or its
        /// upload time where the store keeps none).
        time: Option<SystemTime>,
        files: usize,
        bytes_downloaded: u64,
    },
    /// `if_db_not_exists` and the output already exists.
    OutputExists,
    /// Restored from a Litestream 0.3 generation.
    RestoredV3 {
        generation: v3::GenerationId,
        /// The last WAL index applied.
        index: u32,
        files: usize,
        bytes_downloaded: u64,
    },
    /// `if_replica_exists` and the replica is empty.
    NoReplica,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(
        "output {path} already exists; restore never overwrites a database (use --if-db-not-exists to make this a no-op, or choose another -o path)"
    )]
    OutputExists { path: PathBuf },

    #[error(
        "{path} exists without its database; it would be replayed onto the restored file. Move it away and retry"
    )]
    StaleSidecar { path: PathBuf },

    #[error(
        "no replica found at {url} (no LTX files, no Litestream 0.3 generations); use --if-replica-exists to make this a no-op"
    )]
    NoReplica { url: String },

    #[error("cannot restore from {url}")]
    Plan {
        url: String,
        #[source]
        source: PlanError,
    },

    #[error(transparent)]
    Store(#[from] StoreError),

    #[error("replica file {key} is corrupt")]
    Corrupt {
        key: String,
        #[source]
        source: LtxError,
    },

    #[error("replica file {key} does not match its name or its chain: {detail}")]
    Mismatch { key: String, detail: String },

    #[error(
        "not enough space to restore {path}: it needs about {} MiB, and {} has {} MiB free; free some space or restore elsewhere with -o",
        needed >> 20, dir.display(), available >> 20
    )]
    NoSpace {
        path: PathBuf,
        dir: PathBuf,
        needed: u64,
        available: u64,
    },

    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("integrity check of the restored database failed: {detail}")]
    IntegrityCheck { detail: String },

    #[error("restore task failed: {0}")]
    Task(String),

    #[error(
        "{path} exists but is not a database a follower left (no position beside it, or the file was replaced); follow into a new path, or remove it to restore afresh"
    )]
    NotAFollower { path: PathBuf },

    #[error(
        "this build's SQLite lacks the sqlite_dbpage table (SQLITE_ENABLE_DBPAGE_VTAB), which following needs; build with LIBSQLITE3_FLAGS=-DSQLITE_ENABLE_DBPAGE_VTAB"
    )]
    FollowUnsupported,

    #[error("SQLite error on {path}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    #[error(transparent)]
    V3(#[from] V3Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How many times a restore plans again when a planned file vanished under it.
const MAX_REPLANS: u32 = 3;

/// How far a restore has come, for a progress display: the bytes of the planned
/// files, and those read so far. Written by the restore, read by anyone (Relaxed: a
/// display needs no ordering).
#[derive(Debug, Default)]
pub struct Progress {
    pub total_bytes: AtomicU64,
    pub read_bytes: AtomicU64,
}

impl Progress {
    fn read(&self, n: usize) {
        self.read_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Restores `replica` into `opts.output`.
pub async fn restore(
    replica: &Replica,
    opts: &RestoreOptions,
) -> Result<RestoreOutcome, RestoreError> {
    restore_with_progress(replica, opts, &Arc::new(Progress::default())).await
}

/// [`restore`], reporting into `progress` as it reads.
pub async fn restore_with_progress(
    replica: &Replica,
    opts: &RestoreOptions,
    progress: &Arc<Progress>,
) -> Result<RestoreOutcome, RestoreError> {
    let out = &opts.output;
    if let Some(skip) = check_output(opts)? {
        info!(path = %out.display(), "database exists; skipping restore");
        return Ok(skip);
    }

    let (planned, mode) = tokio::join!(choose_source(replica, opts), restored_mode(replica, opts));
    let (mode, identity) = mode?;
    let mut planned = planned;
    let parent = parent_dir(out);
    let mut replans = 0;
    let (source, work, bytes_downloaded) = loop {
        let source = match planned? {
            Some(s) => s,
            None => {
                let skip = no_replica(replica, opts)?;
                info!(url = %replica.url(), "no replica; skipping restore");
                return Ok(skip);
            }
        };
        file_mode::create_dir_all(&parent, mode.dir()).map_err(io_err(&parent))?;
        let attempt = async {
            if let Source::Ltx(chain) = &source {
                check_space(replica, chain, out, &parent).await?;
            }
            let work = WorkDir::create(&parent, out, mode)?;
            let bytes = match &source {
                Source::Ltx(chain) => {
                    let total = chain.iter().map(|f| f.size).sum();
                    progress.total_bytes.store(total, Ordering::Relaxed);
                    progress.read_bytes.store(0, Ordering::Relaxed);
                    // Direct writes leave the page cache cold, which an integrity
                    // check reading every page back would pay many times over
                    // (measured: quick_check of 1 GiB 22 s cold, under 1 s warm).
                    let writes = match opts.integrity {
                        IntegrityCheck::None => Writes::PipelinedDirect,
                        IntegrityCheck::Quick | IntegrityCheck::Full => Writes::Pipelined,
                    };
                    let parallelism = opts.parallelism.max(1);
                    apply_chain(replica, chain, &work, parallelism, writes, progress).await?
                }
                Source::V3(plan) => {
                    v3::apply(
                        replica.client(),
                        plan,
                        &work.db_path(),
                        &work.0,
                        opts.parallelism.max(1),
                    )
                    .await?
                }
            };
            Ok::<_, RestoreError>((work, bytes))
        };
        match attempt.await {
            Ok((work, bytes)) => break (source, work, bytes),
            // A replicator's retention or compaction deleted a planned file while
            // this restore ran (the replica is live), before the space check or a
            // download read it: plan again from a new listing, which holds the files
            // that replaced it. The work directory of the attempt is gone already.
            Err(RestoreError::Store(StoreError::NotFound { key })) if replans < MAX_REPLANS => {
                replans += 1;
                info!(%key, attempt = replans, "a planned replica file was deleted meanwhile (retention or compaction); planning again");
                planned = choose_source(replica, opts).await;
            }
            Err(e) => return Err(e),
        }
    };
    let db = work.db_path();
    check_integrity(&db, opts.integrity).await?;
    file_mode::set_path(&db, mode.bits()).map_err(io_err(&db))?;
    give_to_directory_owner(&db, &parent, out)?;

    // A hard link never replaces an existing file, unlike rename.
    std::fs::hard_link(&db, out).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            RestoreError::OutputExists { path: out.clone() }
        } else {
            io_err(out)(e)
        }
    })?;
    File::open(&parent)
        .and_then(|d| d.sync_all())
        .map_err(io_err(&parent))?;
    drop(work);
    match source {
        Source::Ltx(chain) => {
            let txid = chain.last().map(|f| f.id.range.max).unwrap_or(0);
            // A 0.3 restore is not a point of the LTX history: replication resumes
            // from a snapshot, so only LTX restores seed the spool.
            if opts.seed_spool && opts.target == Target::Latest {
                seed_spool(out, txid, identity.as_ref())?;
            }
            debug!(path = %out.display(), txid = format!("{txid:016x}"), "restored");
            Ok(RestoreOutcome::Restored {
                txid,
                time: chain.last().and_then(RemoteFile::time),
                files: chain.len(),
                bytes_downloaded,
            })
        }
        Source::V3(plan) => {
            debug!(path = %out.display(), generation = %plan.generation, "restored");
            Ok(RestoreOutcome::RestoredV3 {
                generation: plan.generation,
                index: plan.last_index(),
                files: plan.objects(),
                bytes_downloaded,
            })
        }
    }
}

/// What the output's path allows, before the replica is read: `Some` when
/// `if_db_not_exists` makes an existing output a no-op; an error for an existing
/// output otherwise, or for a `-wal`/`-journal` left beside it (SQLite would replay
/// it onto the restored file).
fn check_output(opts: &RestoreOptions) -> Result<Option<RestoreOutcome>, RestoreError> {
    let out = &opts.output;
    if out.exists() {
        if opts.if_db_not_exists {
            return Ok(Some(RestoreOutcome::OutputExists));
        }
        return Err(RestoreError::OutputExists { path: out.clone() });
    }
    for suffix in ["-wal", "-journal"] {
        let side = sidecar(out, suffix);
        if side.exists() {
            return Err(RestoreError::StaleSidecar { path: side });
        }
    }
    Ok(None)
}

/// An empty replica: a no-op with `if_replica_exists`, else an error.
fn no_replica(replica: &Replica, opts: &RestoreOptions) -> Result<RestoreOutcome, RestoreError> {
    if opts.if_replica_exists {
        return Ok(RestoreOutcome::NoReplica);
    }
    Err(RestoreError::NoReplica {
        url: replica.url().to_owned(),
    })
}

/// Fails before anything is written when `dir` cannot hold the restore: the
/// database at the end of the chain (its last file's commit size, from one ranged
/// GET of that file's header) and the downloaded files applied onto it.
async fn check_space(
    replica: &Replica,
    chain: &[RemoteFile],
    out: &Path,
    dir: &Path,
) -> Result<(), RestoreError> {
    let Some(last) = chain.last() else {
        return Ok(());
    };
    if !replica.client().info().capabilities.ranged_get {
        return Ok(());
    }
    let raw = Fetch::new(replica.client().clone(), last.key.clone(), last.size)
        .read_prefix(crate::ltx::HEADER_SIZE as u64)
        .await?;
    let header = Header::from_bytes(&raw).map_err(|source| RestoreError::Corrupt {
        key: last.key.to_string(),
        source,
    })?;
    let db_size = u64::from(header.commit) * u64::from(header.page_size);
    let downloads: u64 = chain.iter().skip(1).map(|f| f.size).sum();
    let needed = db_size + downloads;
    let stat = rustix::fs::statvfs(dir).map_err(|e| RestoreError::Io {
        path: dir.to_path_buf(),
        source: e.into(),
    })?;
    let available = stat.f_bavail.saturating_mul(stat.f_frsize);
    if available < needed {
        return Err(RestoreError::NoSpace {
            path: out.to_path_buf(),
            dir: dir.to_path_buf(),
            needed,
            available,
        });
    }
    Ok(())
}

/// What a restore applies: a chain of LTX files, or a Litestream 0.3 generation.
#[derive(Debug)]
enum Source {
    Ltx(Vec<RemoteFile>),
    V3(v3::V3Plan),
}

/// Picks the history to restore from, `None` when the replica holds none.
///
/// Where both LTX files and 0.3 generations exist, the choice is Litestream 0.5's: for
/// the latest state, whichever was updated last; for a timestamp, 0.3 when its newest
/// snapshot at or before the time is newer than the newest LTX snapshot before it. A
/// TXID is LTX-only, a generation 0.3-only.
async fn choose_source(
    replica: &Replica,
    opts: &RestoreOptions,
) -> Result<Option<Source>, RestoreError> {
    let plan_ltx = |files: &[RemoteFile], target| {
        let chain = plan(files, target).map_err(|source| RestoreError::Plan {
            url: replica.url().to_owned(),
            source,
        })?;
        let txid = chain.last().map(|f| f.id.range.max).unwrap_or(0);
        info!(
            files = chain.len(),
            txid = format!("{txid:016x}"),
            "restore plan"
        );
        Ok::<_, RestoreError>(chain)
    };
    let v3_target = match opts.target {
        Target::Txid(_) => {
            let files = replica.list_files(None).await?;
            if files.is_empty() {
                return Ok(None);
            }
            return Ok(Some(Source::Ltx(plan_ltx(&files, opts.target)?)));
        }
        Target::V3(t) => {
            let listing = v3::list(replica.client().as_ref()).await?;
            // An empty replica is "no replica"; one with only LTX files lacks the
            // generation asked for, which the plan reports.
            if listing.is_empty() && replica.list_files(None).await?.is_empty() {
                return Ok(None);
            }
            return Ok(Some(Source::V3(v3::plan(&listing, &t)?)));
        }
        Target::Latest => V3Target::default(),
        Target::Timestamp(ts) => V3Target {
            timestamp: Some(ts),
            ..Default::default()
        },
    };
    let mut files = replica.list_files(None).await?;
    let listing = v3::list(replica.client().as_ref()).await?;
    if let Target::Timestamp(ts) = opts.target {
        // A live replicator's compaction or retention may delete a listed file before
        // its time is read: that listing is stale, so list again, as a restore does
        // when a planned file vanishes.
        let mut relisted = 0;
        loop {
            match replica.fill_ltx_times(&mut files, Some(ts)).await {
                Ok(()) => break,
                Err(StoreError::NotFound { key }) if relisted < MAX_REPLANS => {
                    relisted += 1;
                    info!(%key, attempt = relisted, "a listed replica file was deleted meanwhile (retention or compaction); listing again");
                    files = replica.list_files(None).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let use_v3 = match (files.is_empty(), listing.is_empty()) {
        (true, true) => return Ok(None),
        (false, true) => false,
        (true, false) => true,
        (false, false) => {
            let use_v3 = match opts.target {
                Target::Timestamp(ts) => {
                    let ltx_snapshot = files
                        .iter()
                        .filter(|f| f.id.level == crate::layout::SNAPSHOT_LEVEL)
                        .filter_map(|f| f.time())
                        .filter(|c| *c < ts)
                        .max();
                    let v3_snapshot =
                        v3::plan::newest_snapshot_at(&listing, Some(ts)).map(|s| s.modified);
                    v3_snapshot.is_some_and(|v| ltx_snapshot.is_none_or(|l| v > l))
                }
                _ => {
                    let ltx_updated = files.iter().filter_map(|f| f.time()).max();
                    v3::plan::updated_at(&listing)
                        .is_some_and(|v| ltx_updated.is_none_or(|l| v > l))
                }
            };
            info!(
                url = %replica.url(),
                "the replica holds both LTX files and Litestream 0.3 generations; restoring from the {}, which {}",
                if use_v3 { "0.3 generations" } else { "LTX files" },
                match opts.target {
                    Target::Timestamp(_) => "have the newer snapshot for the timestamp",
                    _ => "were updated last",
                }
            );
            use_v3
        }
    };
    if use_v3 {
        Ok(Some(Source::V3(v3::plan(&listing, &v3_target)?)))
    } else {
        Ok(Some(Source::Ltx(plan_ltx(&files, opts.target)?)))
    }
}

/// Records that `db` holds exactly TXID `txid` of its replica (see
/// [`RestoreOptions::seed_spool`]).
fn seed_spool(
    db: &Path,
    txid: u64,
    identity: Option<&root_record::Identity>,
) -> Result<(), RestoreError> {
    let mut header = [0u8; 18];
    File::open(db)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header))
        .map_err(io_err(db))?;
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n => u32::from(n),
    };
    record_position(db, txid, page_size, identity)
}

/// [`seed_spool`] for a database whose page size is known, without opening it: a
/// process that holds SQLite connections to `db` must not open and close another
/// descriptor of it (closing one drops every POSIX lock the process holds there).
fn record_position(
    db: &Path,
    txid: u64,
    page_size: u32,
    identity: Option<&root_record::Identity>,
) -> Result<(), RestoreError> {
    use crate::spool::{Durability, Spool, SpoolState};
    let meta = std::fs::metadata(db).map_err(io_err(db))?;
    let state = SpoolState::for_file(txid, page_size, &meta);
    let mode = FileMode::of(&meta);
    let spool = Spool::open(db, mode)
        .and_then(|s| s.save_state(&state, Durability::Now).map(|()| s))
        .map_err(|e| RestoreError::Task(format!("recording the restored state: {}", Chain(&e))))?;
    // The restored database is the replica's database: replication finds its id.
    if let Some(identity) = identity {
        root_record::write_local_id(spool.dir(), &identity.id, mode)
            .map_err(io_err(spool.dir()))?;
    }
    Ok(())
}

/// The mode the restored database gets (asked for, or recorded by the replica, or
/// 0600), and the identity the replica records: one GET of its record.
async fn restored_mode(
    replica: &Replica,
    opts: &RestoreOptions,
) -> Result<(FileMode, Option<root_record::Identity>), RestoreError> {
    let (mode, identity) = match root_record::read(replica.client().as_ref()).await {
        Ok(r) => r.map(|r| (r.mode, r.database)).unwrap_or_default(),
        Err(RootRecordError::Store(e)) => return Err(e.into()),
        // Not worth failing a restore over: the private mode is the safe guess.
        Err(e @ RootRecordError::Malformed { .. }) => {
            tracing::warn!(error = %Chain(&e), mode = %FileMode::PRIVATE, "restoring with the private mode");
            (None, None)
        }
    };
    Ok((opts.mode.or(mode).unwrap_or(FileMode::PRIVATE), identity))
}

/// Run as root into a directory that belongs to someone else (a container whose
/// service runs as its own user, with the restore in an init step as root), the
/// restored file belongs to the directory's owner, as if that user had restored it.
fn give_to_directory_owner(db: &Path, dir: &Path, out: &Path) -> Result<(), RestoreError> {
    use std::os::unix::fs::MetadataExt;
    let ours = std::fs::metadata(db).map_err(io_err(db))?;
    let theirs = std::fs::metadata(dir).map_err(io_err(dir))?;
    if ours.uid() != 0 || theirs.uid() == 0 {
        return Ok(());
    }
    std::os::unix::fs::chown(db, Some(theirs.uid()), Some(theirs.gid())).map_err(io_err(db))?;
    info!(path = %out.display(), uid = theirs.uid(), gid = theirs.gid(), "restored database given to the owner of its directory");
    Ok(())
}

fn sidecar(db: &Path, suffix: &str) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// A private directory beside the output for downloads and the database under
/// construction, with the restored database's mode; removed on drop, so a failed
/// restore leaves nothing behind.
#[derive(Debug)]
struct WorkDir(PathBuf, FileMode);

impl WorkDir {
    fn create(parent: &Path, out: &Path, mode: FileMode) -> Result<Self, RestoreError> {
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "db".into());
        remove_stale_work_dirs(parent, &name);
        let dir = parent.join(format!(
            ".{name}.restore-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        file_mode::create_dir(&dir, mode.dir()).map_err(io_err(&dir))?;
        Ok(Self(dir, mode))
    }

    fn db_path(&self) -> PathBuf {
        self.0.join("db")
    }

    fn download_path(&self, i: usize) -> PathBuf {
        self.0.join(format!("{i:06}.ltx"))
    }
}

/// Tasks aborted when dropped.
struct AbortOnDrop<T>(Vec<JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Removes the work directories of restores of the same output whose process is
/// gone (killed with SIGKILL, or by a power loss), so they do not pile up beside it.
fn remove_stale_work_dirs(parent: &Path, name: &str) {
    let prefix = format!(".{name}.restore-");
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let Some(pid) = rest
            .split_once('-')
            .and_then(|(p, _)| p.parse::<u32>().ok())
        else {
            continue;
        };
        if crate::host::pid_alive(pid) {
            continue;
        }
        match std::fs::remove_dir_all(e.path()) {
            Ok(()) => {
                info!(path = %e.path().display(), "removed the work directory of an interrupted restore")
            }
            Err(err) => {
                tracing::warn!(path = %e.path().display(), error = %err, "could not remove the work directory of an interrupted restore")
            }
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) =
            std::fs::remove_dir_all(&self.0).or_else(|_| std::fs::remove_dir_all(&self.0))
        {
            tracing::warn!(path = %self.0.display(), error = %e, "could not remove restore work directory");
        }
    }
}

/// Downloads run ahead (bounded by `parallelism`) while files are applied strictly in
/// chain order, so the page writes of file N overlap the downloads of N+1...
async fn apply_chain(
    replica: &Replica,
    chain: &[RemoteFile],
    work: &WorkDir,
    parallelism: usize,
    base_writes: Writes,
    progress: &Arc<Progress>,
) -> Result<u64, RestoreError> {
    let sem = Arc::new(Semaphore::new(parallelism));
    let (cancel, cancelled) = tokio::sync::watch::channel(false);
    // Aborted if the restore is dropped (a signal), so that no download keeps
    // writing into the work directory while it is removed.
    let mut downloads = AbortOnDrop(Vec::new());
    for (i, f) in chain.iter().enumerate().skip(1) {
        let sem = sem.clone();
        let client = replica.client().clone();
        let f = f.clone();
        let path = work.download_path(i);
        let bits = work.1.file();
        let mut cancelled = cancelled.clone();
        let progress = Arc::clone(progress);
        downloads.0.push(tokio::spawn(async move {
            let _permit = sem
                .acquire_owned()
                .await
                .map_err(|_| RestoreError::Task("cancelled".into()))?;
            tokio::select! {
                r = download(client, &f, &path, bits, &progress) => r,
                _ = cancelled.wait_for(|c| *c) => Err(RestoreError::Task("cancelled".into())),
            }
        }));
    }

    let db_path = work.db_path();
    let db = Arc::new(file_mode::create_new(&db_path, work.1.file()).map_err(io_err(&db_path))?);
    let mut total = 0;
    let mut page_size = None;
    let mut result = Ok(());
    let mut awaited = 0;
    if let Some(base) = chain.first() {
        match stream_base(replica, base, &db, &db_path, base_writes, progress).await {
            Ok((bytes, ps)) => {
                total += bytes;
                page_size = Some(ps);
            }
            Err(e) => result = Err(e),
        }
    }
    let rest = if result.is_ok() { &chain[1..] } else { &[][..] };
    for (i, (f, dl)) in rest.iter().zip(downloads.0.iter_mut()).enumerate() {
        let i = i + 1;
        awaited = i;
        let bytes = match dl.await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                result = Err(e);
                break;
            }
            Err(e) => {
                result = Err(RestoreError::Task(e.to_string()));
                break;
            }
        };
        total += bytes;
        let (db, f2, path, db_path) = (
            db.clone(),
            f.clone(),
            work.download_path(i),
            db_path.clone(),
        );
        let applied =
            tokio::task::spawn_blocking(move || apply_file(&db, &db_path, &f2, &path, page_size))
                .await
                .map_err(|e| RestoreError::Task(e.to_string()))
                .and_then(|r| r);
        match applied {
            Ok(ps) => page_size = Some(ps),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_err() {
        // Stop the downloads and wait for every task: a task still creating a file
        // would race the removal of the work directory and leave it behind.
        sem.close();
        let _ = cancel.send(true);
        // (A handle already awaited must not be polled again.)
        for d in downloads.0.iter_mut().skip(awaited) {
            let _ = d.await;
        }
    }
    result?;
    db.sync_all().map_err(io_err(&db_path))?;
    Ok(total)
}

/// Applies the chain's first file straight from its GET: a blocking thread decodes
/// what an async read hands it, so the snapshot never touches the disk twice.
async fn stream_base(
    replica: &Replica,
    f: &RemoteFile,
    db: &Arc<File>,
    db_path: &Path,
    writes: Writes,
    progress: &Arc<Progress>,
) -> Result<(u64, u32), RestoreError> {
    let reader = StreamReader::open(replica.client().clone(), f.key.clone(), f.size).await?;
    let (db, f, db_path) = (db.clone(), f.clone(), db_path.to_path_buf());
    let progress = Arc::clone(progress);
    tokio::task::spawn_blocking(move || {
        let reader = Counted {
            inner: reader,
            progress,
        };
        let mut reader = BufReader::with_capacity(RUN_BYTES, reader);
        let applied = apply_ltx(&db, &db_path, &f, &mut reader, None, writes);
        let mut reader = reader.into_inner().inner;
        match (applied, reader.take_error()) {
            // A broken stream surfaces in the decoder; report it as the GET it was.
            (Err(_), Some(e)) => Err(e.into()),
            (applied, _) => applied.map(|ps| (reader.bytes_read(), ps)),
        }
    })
    .await
    .map_err(|e| RestoreError::Task(e.to_string()))?
}

/// Downloads `f` to `path`, resuming a response that breaks off ([`fetch`]).
/// A reader that reports what passes through it to a [`Progress`].
struct Counted<R> {
    inner: R,
    progress: Arc<Progress>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.read(n);
        Ok(n)
    }
}

async fn download(
    client: Arc<dyn crate::client::ReplicaClient>,
    f: &RemoteFile,
    path: &Path,
    bits: u32,
    progress: &Progress,
) -> Result<u64, RestoreError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Large buffers: tokio runs each file write on its blocking pool, so small
    // chunks cost a thread hand-off each (seconds per GiB).
    const CHUNK: usize = 1 << 20;
    let mut fetch = Fetch::new(client, f.key.clone(), f.size);
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(bits)
        .open(path)
        .await
        .map_err(io_err(path))?;
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(bits))
        .await
        .map_err(io_err(path))?;
    let mut file = tokio::io::BufWriter::with_capacity(CHUNK, file);
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    loop {
        let mut stream = fetch.open(offset).await?;
        let broke = loop {
            match stream.read(&mut buf).await {
                Ok(0) => break None,
                Ok(n) => {
                    file.write_all(&buf[..n]).await.map_err(io_err(path))?;
                    offset += n as u64;
                    progress.read(n);
                }
                Err(e) => break Some(e),
            }
        };
        if broke.is_none() && offset >= f.size {
            break;
        }
        fetch.broke(offset, broke).await?;
    }
    file.flush().await.map_err(io_err(path))?;
    debug!(key = %f.key, bytes = offset, resumed = fetch.failures, "downloaded");
    Ok(offset)
}

/// Applies one downloaded LTX file, then removes the download. Returns the page size.
fn apply_file(
    db: &File,
    db_path: &Path,
    f: &RemoteFile,
    path: &Path,
    page_size: Option<u32>,
) -> Result<u32, RestoreError> {
    let file = File::open(path).map_err(io_err(path))?;
    let ps = apply_ltx(
        db,
        db_path,
        f,
        BufReader::with_capacity(1 << 20, file),
        page_size,
        Writes::Inline,
    )?;
    // The download is no longer needed; free the space early on big restores.
    let _ = std::fs::remove_file(path);
    Ok(ps)
}

/// A decoder of `src`, the content of the replica file `f`, whose header covers the
/// TXIDs its name says.
fn open_ltx<R: Read>(f: &RemoteFile, src: R) -> Result<Decoder<R>, RestoreError> {
    let dec = Decoder::new(src).map_err(|source| RestoreError::Corrupt {
        key: f.key.to_string(),
        source,
    })?;
    let h = dec.header();
    if h.min_txid != f.id.range.min || h.max_txid != f.id.range.max {
        return Err(RestoreError::Mismatch {
            key: f.key.to_string(),
            detail: format!(
                "its header covers TXIDs {:016x}-{:016x}",
                h.min_txid, h.max_txid
            ),
        });
    }
    Ok(dec)
}

/// The directory `path` is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// How [`apply_ltx`] writes pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writes {
    /// On the decoding thread, through the page cache (a small file).
    Inline,
    /// On a second thread, through the page cache (a snapshot whose pages the
    /// integrity check reads back at once).
    Pipelined,
    /// On a second thread, around the page cache where the filesystem allows (a
    /// snapshot that nothing reads back at once).
    PipelinedDirect,
}

/// Applies one LTX file read from `src` to `db` (at `db_path`): writes its pages, then
/// sets the database length to the file's commit size. Returns the page size.
/// `writes` says on which thread and how (see [`Writes`]).
fn apply_ltx(
    db: &File,
    db_path: &Path,
    f: &RemoteFile,
    src: impl Read,
    page_size: Option<u32>,
    writes: Writes,
) -> Result<u32, RestoreError> {
    let corrupt = |source| RestoreError::Corrupt {
        key: f.key.to_string(),
        source,
    };
    let mut dec = open_ltx(f, src)?;
    let h = *dec.header();
    if let Some(ps) = page_size.filter(|ps| *ps != h.page_size) {
        return Err(RestoreError::Mismatch {
            key: f.key.to_string(),
            detail: format!("page size {} after files of page size {ps}", h.page_size),
        });
    }
    let ps = u64::from(h.page_size);
    let page = h.page_size as usize;
    let write_err = |e: std::io::Error| io_err(db_path)(e);
    // The snapshot goes around the page cache where the filesystem allows (see
    // `direct`), in larger runs: a direct write costs a device request each.
    let mut writer = match writes {
        Writes::Inline | Writes::Pipelined => direct::RunWriter::buffered(db),
        Writes::PipelinedDirect => direct::RunWriter::new(db, db_path),
    };
    let run_target = if writer.is_direct() {
        DIRECT_RUN_BYTES
    } else {
        RUN_BYTES
    };
    // Runs of consecutive pages (a snapshot is one long run) go out as writes of up to
    // `run_target` rather than one pwrite per page. Pages are decoded straight into
    // the run.
    let run_bytes = (run_target / page).max(1) * page;
    // `sink` writes the first `len` bytes of a run and hands back a buffer to fill
    // next. Buffers keep their full length from one run to the next: decoding
    // overwrites them, so nothing is zero-filled per page.
    let decode =
        |sink: &mut dyn FnMut(u64, AlignedBuf, usize) -> Result<AlignedBuf, RestoreError>| {
            let mut run = AlignedBuf::new(run_bytes);
            let mut carry: Vec<u8> = vec![0u8; page];
            let mut fill = 0usize;
            let mut run_start = 0u32;
            loop {
                let Some(pgno) = dec
                    .next_page(&mut run.as_mut_slice()[fill..fill + page])
                    .map_err(corrupt)?
                else {
                    break;
                };
                if fill == 0 {
                    run_start = pgno;
                } else if pgno != run_start + (fill / page) as u32 {
                    // The page just decoded starts the next run.
                    carry.copy_from_slice(&run.as_slice()[fill..fill + page]);
                    run = sink((u64::from(run_start) - 1) * ps, run, fill)?;
                    run.as_mut_slice()[..page].copy_from_slice(&carry);
                    run_start = pgno;
                    fill = 0;
                }
                fill += page;
                if fill == run_bytes {
                    run = sink((u64::from(run_start) - 1) * ps, run, fill)?;
                    fill = 0;
                }
            }
            if fill > 0 {
                sink((u64::from(run_start) - 1) * ps, run, fill)?;
            }
            dec.finish().map_err(corrupt)?;
            Ok::<(), RestoreError>(())
        };
    if writes == Writes::Inline {
        decode(&mut |offset, run: AlignedBuf, len| {
            writer
                .write(&run.as_slice()[..len], offset)
                .map_err(write_err)?;
            Ok(run)
        })?;
    } else {
        // Decoding (LZ4, CRC-64) and the write overlap on two threads.
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, AlignedBuf, usize)>(2);
            // Written buffers come back, so the decoder never faults in fresh memory.
            let (back_tx, back_rx) = std::sync::mpsc::channel::<AlignedBuf>();
            let writer = scope.spawn(move || -> std::io::Result<bool> {
                for (offset, run, len) in rx {
                    writer.write(&run.as_slice()[..len], offset)?;
                    let _ = back_tx.send(run);
                }
                Ok(writer.is_direct())
            });
            let decoded = decode(&mut |offset, run: AlignedBuf, len| {
                tx.send((offset, run, len))
                    .map_err(|_| RestoreError::Task("the restore writer stopped".into()))?;
                Ok(back_rx
                    .try_recv()
                    .unwrap_or_else(|_| AlignedBuf::new(run_bytes)))
            });
            drop(tx);
            let written = writer
                .join()
                .map_err(|_| RestoreError::Task("the restore writer panicked".into()))?;
            // A write error stops the writer, which makes the decoder's send fail:
            // report the cause.
            let direct = written.map_err(write_err)?;
            decoded?;
            debug!(key = %f.key, direct, "snapshot written");
            Ok::<(), RestoreError>(())
        })?;
    }
    db.set_len(u64::from(h.commit) * ps).map_err(write_err)?;
    Ok(h.page_size)
}

/// The largest write of a restored run, and the read size of a streamed snapshot.
/// Buffers this small stay in the CPU's cache between the decoder and the kernel's
/// copy into the page cache. Measured on the benchmark VM, 1 GiB restored a few
/// seconds after the guest's free memory went back to the host (free page
/// reporting): 4 MiB writes 3.3-3.5 s, 256 KiB 1.7-2.3 s, 64 KiB 2.1-3.4 s (more
/// hand-offs); `dd` shows the same knee between 256 and 512 KiB. With memory freed
/// just before, every size takes 0.9-1.0 s.
const RUN_BYTES: usize = 256 << 10;

/// The run size when the snapshot is written directly: each run is one device request,
/// so larger is faster (`dd oflag=direct` on the benchmark VM, 1 GiB: 256 KiB 1.04 s,
/// 1 MiB 0.83 s, 4 MiB 0.58 s).
const DIRECT_RUN_BYTES: usize = 4 << 20;

async fn check_integrity(db: &Path, level: IntegrityCheck) -> Result<(), RestoreError> {
    let pragma = match level {
        IntegrityCheck::None => return Ok(()),
        IntegrityCheck::Quick => "PRAGMA quick_check",
        IntegrityCheck::Full => "PRAGMA integrity_check",
    };
    let path = db.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let fail = |e: rusqlite::Error| RestoreError::IntegrityCheck {
            detail: e.to_string(),
        };
        // immutable=1: the file is a complete image with no WAL, and opening it must
        // not create -wal/-shm files beside it.
        let uri = format!("file:{}?immutable=1", uri_path(&path));
        // The first connection of the process initializes SQLite; the replicator's
        // memory setting must come before it.
        crate::engine::sqlite::no_bulk_page_cache();
        let conn = rusqlite::Connection::open_with_flags(
            uri,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(fail)?;
        let mut stmt = conn.prepare(pragma).map_err(fail)?;
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(fail)?
            .collect::<Result<_, _>>()
            .map_err(fail)?;
        if rows == ["ok"] {
            Ok(())
        } else {
            Err(RestoreError::IntegrityCheck {
                detail: rows.join("; "),
            })
        }
    })
    .await
    .map_err(|e| RestoreError::Task(e.to_string()))?
}

/// `path` as the path of an SQLite URI: bytes that a URI gives a meaning (`%`, `?`,
/// `#`) and any byte outside printable ASCII are percent-encoded, so a directory named
/// `a%41` or `x?y` opens itself, not another file, and non-UTF-8 names survive.
fn uri_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    percent_encoding::percent_encode(path.as_os_str().as_bytes(), crate::store_url::PATH_ESCAPE)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn the_integrity_check_opens_paths_that_look_like_uri_syntax() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a%41 b", "q?mode=memory", "h#frag", "caf\u{e9}"] {
            let sub = dir.path().join(name);
            std::fs::create_dir(&sub).unwrap();
            let db = sub.join("app.db");
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
                .unwrap();
            drop(conn);
            check_integrity(&db, IntegrityCheck::Quick).await.unwrap();
        }
        // A damaged file is still found to be damaged under such a name.
        let db = dir.path().join("a%41 b").join("app.db");
        let mut bytes = std::fs::read(&db).unwrap();
        // Table t's root page: no longer a b-tree page.
        let page = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
        bytes[page..page + 8].fill(0xFF);
        std::fs::write(&db, bytes).unwrap();
        assert!(check_integrity(&db, IntegrityCheck::Quick).await.is_err());
    }

    #[test]
    fn the_work_directory_has_the_restored_mode_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("app.db");
        let mode = FileMode::new(0o640).unwrap();
        let work = WorkDir::create(dir.path(), &out, mode).unwrap();
        let path = work.0.clone();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o750);
        drop(work);
        assert!(!path.exists());
    }
}
