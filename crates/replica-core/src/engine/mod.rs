//! The replication engine for one database: a capture thread that turns WAL frames
//! into spooled LTX files (and runs checkpoints and snapshots), and a shipper task that
//! uploads the spool. They meet only at the spool directory, so a slow or absent store
//! never stalls capture, and capture never waits for the network.

mod capture;
mod levels;
mod maintain;
mod manifest;
mod points;
pub mod retention;
mod ship;
pub(crate) mod sqlite;
pub mod status;
#[cfg(target_os = "linux")]
mod watch;
#[cfg(not(target_os = "linux"))]
#[path = "watch_poll.rs"]
mod watch;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{info, warn};

pub use capture::SnapshotReason;
pub use levels::{Levels, LevelsError};
pub use manifest::Manifest;
pub use points::ConsistentRead;
pub use status::{Counters, Monitor, State, Status};

use crate::error::{Chain, StoreError};
use crate::file_mode::FileMode;
use crate::lease::{Fenced, Lease, LeaseConfig, LeaseError, LeaseState};
use crate::replica::Replica;
use crate::requests::{Counted, RequestCounts};
use crate::root_record;
use crate::spool::{Spool, SpoolError};
use sqlite::Connections;

#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// At most one L0 upload per interval; the first change after a quiet interval
    /// ships at once.
    pub sync_interval: Duration,
    pub snapshot_interval: Duration,
    /// How long history is kept (enforced by the retention pass).
    pub retention: Duration,
    /// Compaction intervals of levels 1, 2, … (Litestream's `levels`).
    pub levels: Levels,
    /// How long L0 files (one per sync) stay after they are compacted into L1: the
    /// span of per-sync point-in-time recovery.
    pub l0_retention: Duration,
    /// Spool size past which a warning is logged (an outage makes it grow; pending
    /// L0 files are merged so it stays near the size of the changed pages).
    pub spool_limit: u64,
    /// How often the capture thread looks at the WAL (one `stat`).
    pub poll_interval: Duration,
    /// Captured WAL frames that trigger our PASSIVE checkpoint.
    pub checkpoint_pages: u64,
    /// The shortest time between the starts of two checkpoints triggered by
    /// `checkpoint_pages`. Each checkpoint costs the application a few short barriers
    /// and a WAL sync, about 5% of a flat-out writer's throughput per checkpoint a
    /// second (measured); spacing them bounds that cost, at the price of a WAL that
    /// holds up to this much of the application's writes (Litestream lets it hold a
    /// whole sync interval).
    pub checkpoint_spacing: Duration,
    /// A checkpoint also runs this long after the previous one if the WAL has frames.
    pub checkpoint_interval: Duration,
    /// WAL size (in frames) past which a TRUNCATE checkpoint is attempted.
    pub truncate_pages: u64,
    /// How long our connections wait for SQLite locks.
    pub busy_timeout: Duration,
    /// Upper bound on the bytes merged into one L0 upload.
    pub max_upload_bytes: u64,
    /// The replica's lease: how long it lasts, how long to wait for another holder.
    pub lease: LeaseConfig,
    /// Replicate even to a replica that records another database, making this one
    /// its latest state.
    pub take_over_replica: bool,
    /// Take a snapshot as soon as capture starts, whatever the schedule says
    /// (`replicate --force-snapshot`, e.g. with `--once` for a self-contained backup).
    pub snapshot_at_start: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            sync_interval: Duration::from_secs(1),
            snapshot_interval: Duration::from_secs(3600),
            retention: Duration::from_secs(72 * 3600),
            levels: Levels::default(),
            l0_retention: Duration::from_secs(3600),
            spool_limit: 1 << 30,
            poll_interval: Duration::from_millis(20),
            checkpoint_pages: 1000,
            checkpoint_spacing: Duration::from_millis(500),
            checkpoint_interval: Duration::from_secs(60),
            truncate_pages: 121_359,
            busy_timeout: Duration::from_secs(5),
            max_upload_bytes: 256 << 20,
            lease: LeaseConfig::default(),
            take_over_replica: false,
            snapshot_at_start: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "{path} is not a SQLite database (bad header); point replica at the database file itself"
    )]
    NotSqlite { path: PathBuf },

    #[error("{path} is a directory; give the path of the database file")]
    NotAFile { path: PathBuf },

    #[error("{path} cannot be replicated: journal mode is {mode}, and WAL mode is required")]
    NotWal { path: PathBuf, mode: String },

    #[error("{path} has no pages yet; nothing to snapshot")]
    EmptyDatabase { path: PathBuf },

    #[error("page size of {path} changed from {was} to {now} while replicating")]
    PageSizeChanged { path: PathBuf, was: u32, now: u32 },

    #[error("SQLite error on {path}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("LTX file {path}")]
    Ltx {
        path: PathBuf,
        #[source]
        source: crate::ltx::LtxError,
    },

    #[error(transparent)]
    Spool(#[from] SpoolError),

    #[error(transparent)]
    Store(#[from] StoreError),

    #[error("the WAL was rewound while a snapshot read it")]
    WalRewound,

    #[error(
        "could not upload everything before shutdown: {files} spooled file(s) remain in {dir}; they are uploaded on the next start"
    )]
    FlushIncomplete { files: usize, dir: PathBuf },

    #[error(transparent)]
    Lease(#[from] LeaseError),

    #[error(transparent)]
    Foreign(#[from] crate::root_record::ForeignReplica),

    #[error(
        "replication of {db} stopped: {holder} took the lease of {url}; this process wrote nothing after that (its spool keeps the changes it captured)"
    )]
    LeaseLost {
        db: PathBuf,
        url: String,
        holder: String,
    },

    #[error(
        "replication of {db} stopped: {url} already holds {key} with other content, so another replicator writes this replica; nothing was overwritten, and the spool keeps every change"
    )]
    OtherWriter {
        db: PathBuf,
        url: String,
        key: String,
    },

    /// A caller waited on a replicator that has stopped (or stops while it waits).
    #[error(
        "replication of {db} has stopped, so it cannot answer; its error was logged when it stopped"
    )]
    Stopped { db: PathBuf },

    #[error(
        "the store does not hold TXID {txid:016x} of {db} after {waited:?} (it holds up to {remote:016x}); uploads may be failing: see the log, or wait longer"
    )]
    NotStored {
        db: PathBuf,
        txid: u64,
        remote: u64,
        waited: Duration,
    },

    #[error(
        "could not take the write lock of {path} within the busy timeout to fix a consistent point: a long write transaction holds it; try again when it ends"
    )]
    WriteLockBusy { path: PathBuf },

    /// A bug: the task panicked (its message is in the log, from the panic hook).
    #[error("the {0} task panicked; this is a bug: please report it with the log")]
    Panicked(&'static str),

    /// The runtime is shutting down and dropped the task.
    #[error("the {0} task was cancelled (the runtime is shutting down)")]
    Cancelled(&'static str),

    /// A thread panicked while it held the manifest lock, so the manifest may be
    /// half-updated; this replicator stops rather than upload from it.
    #[error("the manifest lock is poisoned (the {0} task panicked while holding it)")]
    Poisoned(&'static str),
}

impl EngineError {
    /// The error for a task that did not return.
    pub fn joined(task: &'static str, e: &tokio::task::JoinError) -> Self {
        if e.is_panic() {
            EngineError::Panicked(task)
        } else {
            EngineError::Cancelled(task)
        }
    }
}

/// Runs `f` on tokio's blocking pool: SQLite, the spool and the LTX codec do blocking
/// file I/O, which must not hold up the async workers.
pub(crate) async fn off_thread<T, F>(task: &'static str, f: F) -> Result<T, EngineError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, EngineError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EngineError::joined(task, &e))?
}

impl EngineError {
    /// One word for what failed, for metrics labels: the store's kind for a store
    /// error, `disk_full`, `local_io` (the spool, the WAL, the database file),
    /// `sqlite`, or `other`.
    pub fn kind(&self) -> &'static str {
        if self.is_disk_full() {
            return "disk_full";
        }
        match self {
            EngineError::Store(e) => e.kind(),
            EngineError::Spool(_) | EngineError::Io { .. } | EngineError::Ltx { .. } => "local_io",
            EngineError::Sqlite { .. } => "sqlite",
            _ => "other",
        }
    }

    /// The user's setup is wrong (exit 2), rather than something failing at run time.
    pub fn is_config(&self) -> bool {
        matches!(self, EngineError::Foreign(_))
    }

    /// A write failed for lack of space (ENOSPC, EDQUOT, SQLITE_FULL) somewhere in
    /// the error's chain: worth retrying once space is freed.
    pub fn is_disk_full(&self) -> bool {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
            {
                return true;
            }
            if let Some(rusqlite::Error::SqliteFailure(f, _)) = e.downcast_ref::<rusqlite::Error>()
                && f.code == rusqlite::ErrorCode::DiskFull
            {
                return true;
            }
            cur = e.source();
        }
        false
    }
}

/// Counters read by the CLI, benchmarks and metrics. Request counts are per
/// object-store operation.
#[derive(Debug, Default)]
pub struct Stats {
    pub ltx_files: AtomicU64,
    pub snapshots: AtomicU64,
    pub checkpoints: AtomicU64,
    pub max_barrier_us: AtomicU64,
    pub uploads: AtomicU64,
    pub upload_bytes: AtomicU64,
    pub upload_errors: AtomicU64,
    /// Compacted files written (levels 1-8).
    pub compactions: AtomicU64,
    /// Files removed by retention.
    pub deleted_files: AtomicU64,
    /// Object-store calls, by kind.
    pub requests: Arc<RequestCounts>,
    /// Capture retries made because the disk was full.
    pub disk_full_pauses: AtomicU64,
    /// Failures by [`EngineError::kind`]: of uploads, compactions, retention passes
    /// and capture (a disk-full pause counts once per pause).
    pub errors: ErrorKinds,
}

/// Failure counts by kind, one relaxed atomic each.
#[derive(Debug, Default)]
pub struct ErrorKinds {
    counts: [AtomicU64; ERROR_KINDS.len()],
    other: AtomicU64,
}

/// Every value [`EngineError::kind`] returns.
pub const ERROR_KINDS: [&str; 11] = [
    "not_found",
    "conflict",
    "fenced",
    "permission_denied",
    "transient",
    "throttled",
    "invalid",
    "unsupported",
    "disk_full",
    "local_io",
    "sqlite",
];

impl ErrorKinds {
    /// Counts one failure of `kind` (an [`EngineError::kind`] or [`StoreError::kind`]).
    pub fn record(&self, kind: &str) {
        if let Some(i) = ERROR_KINDS.iter().position(|k| *k == kind) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        } else {
            self.other.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(kind, count)` for every kind, `other` last.
    pub fn totals(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<_> = ERROR_KINDS
            .iter()
            .zip(&self.counts)
            .map(|(k, c)| (*k, c.load(Ordering::Relaxed)))
            .collect();
        v.push(("other", self.other.load(Ordering::Relaxed)));
        v
    }
}

/// State shared by the capture thread, the shipper task, the maintenance task and
/// the [`Replicator`] handle. Who writes and who reads each field, and with what
/// ordering (everything else each side keeps to itself):
#[derive(Debug, Default)]
pub struct Shared {
    /// Stop requested. Written once by the handle (`request_stop`, Release); read by
    /// capture before each tick and by the shipper before each pass (Acquire).
    stop: AtomicBool,
    /// `stop` again, for capture's sleeps: it waits on `stop_cv` under this lock
    /// (`wait_stop`), so a stop wakes it at once instead of at its next tick.
    stop_lock: Mutex<bool>,
    stop_cv: Condvar,
    /// Wakes the shipper. Notified by capture (a ship signal, a snapshot spooled) and
    /// by the handle (stop); the shipper is its only waiter.
    ship: Notify,
    /// "Ship what is spooled now." Set only by capture, on its sync-interval clock or
    /// at a stop (Release); taken by the shipper with a swap (AcqRel). The shipper
    /// keeps no clock of its own.
    ship_due: AtomicBool,
    /// Capture has returned (spooled everything, or failed). Written by the capture
    /// thread's wrapper (Release); read by the shipper (Acquire), which then drains the
    /// spool and returns.
    capture_done: AtomicBool,
    /// Capture or the shipper ended with an error. Written by their wrappers
    /// (Release); read by the handle (Acquire) to report the failure.
    failed: AtomicBool,
    /// Callers' requests to capture (see `points`): pushed by anyone, served by
    /// capture after each tick, closed by capture's wrapper when it returns.
    requests: points::Requests,
    /// Wakes capture's wait for a WAL change, so that a request is served at once.
    /// Set by capture when it starts waiting on its WAL; used by whoever queues a
    /// request.
    capture_waker: Mutex<Option<watch::Waker>>,
    /// Notified (to all waiters) by the shipper after each upload has updated the
    /// manifest; waited on by `Monitor::wait_stored`.
    uploaded: Notify,
    /// TXIDs that must stay restorable exactly (a consistent read's, for a verify):
    /// no merge of spooled files crosses them. Added by capture when it fixes one;
    /// read, and pruned once uploaded, by the shipper.
    boundaries: Mutex<std::collections::BTreeSet<u64>>,
    /// Counters: each written by the one side that does the counted work (capture:
    /// files, snapshots, checkpoints, barrier time, disk-full pauses; shipper:
    /// uploads, bytes, errors; maintenance: compactions, deletions), read by anyone.
    /// Relaxed: they order nothing.
    pub stats: Stats,
    /// Local and remote position and the age of the backlog, for [`Status`]: see
    /// `status::Progress` for who writes what. A short lock, taken once per spooled
    /// file and once per upload.
    progress: Mutex<status::Progress>,
    /// The database's permission bits. Written by capture at start and when the file
    /// is replaced, then `mode_changed` fires; read by the mode follower task and by
    /// `start` (Relaxed: the notification orders them).
    db_mode: AtomicU32,
    mode_changed: Notify,
}

impl Shared {
    fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Ok(mut s) = self.stop_lock.lock() {
            *s = true;
        }
        self.stop_cv.notify_all();
        self.ship.notify_one();
    }

    /// Sleeps up to `d`, waking early on stop.
    fn wait_stop(&self, d: Duration) {
        if let Ok(guard) = self.stop_lock.lock() {
            let _ = self
                .stop_cv
                .wait_timeout_while(guard, d, |stopped| !*stopped);
        }
    }

    fn notify_shipper(&self) {
        self.ship.notify_one();
    }

    fn db_mode(&self) -> FileMode {
        FileMode::new(self.db_mode.load(Ordering::Relaxed)).unwrap_or(FileMode::PRIVATE)
    }
}

/// A running replication of one database.
#[derive(Debug)]
pub struct Replicator {
    db: PathBuf,
    spool: Spool,
    shared: Arc<Shared>,
    capture: Option<std::thread::JoinHandle<Result<(), EngineError>>>,
    shipper: Option<tokio::task::JoinHandle<Result<(), EngineError>>>,
    maintenance: Option<tokio::task::JoinHandle<()>>,
    modes: Option<tokio::task::JoinHandle<()>>,
    capture_exit: Arc<Notify>,
    lease: Option<Lease>,
    lease_state: Arc<LeaseState>,
    /// What is in the replica; the shipper and maintenance update it.
    manifest: Arc<Mutex<Manifest>>,
}

/// A database's WAL held by a read transaction until replication starts
/// ([`Replicator::pin`]).
#[derive(Debug)]
pub struct Pin(Connections);

impl Replicator {
    /// Takes the replica's lease (waiting for another holder as `cfg.lease` says),
    /// then [`Replicator::start_leased`].
    pub async fn start(
        db: &Path,
        replica: Replica,
        cfg: EngineConfig,
    ) -> Result<Self, EngineError> {
        let lease = Self::take_lease(db, &replica, cfg.lease).await?;
        Self::start_leased(db, replica, cfg, lease).await
    }

    /// Takes the lease of `db`'s replica, for [`Replicator::start_leased`].
    pub async fn take_lease(
        db: &Path,
        replica: &Replica,
        cfg: LeaseConfig,
    ) -> Result<Lease, LeaseError> {
        // The lease may be the replica's first object: its directories get the
        // database's bits, as everything else does.
        if let Some(mode) = FileMode::of_path(db) {
            replica.client().set_file_mode(mode);
        }
        let label = db.display().to_string();
        Lease::acquire(replica.client().clone(), cfg, Some(&label)).await
    }

    /// Opens `db` (creating it in WAL mode if missing), checks that the replica is
    /// this database's, works out where it stands against the replica, and starts
    /// capturing and shipping. Every write goes through `lease` ([`Fenced`]).
    pub async fn start_leased(
        db: &Path,
        replica: Replica,
        cfg: EngineConfig,
        lease: Lease,
    ) -> Result<Self, EngineError> {
        Self::start_pinned(db, replica, cfg, lease, None).await
    }

    /// Holds `db`'s WAL before replication can start (the store is not reachable
    /// yet): the application may write at once, and no checkpoint moves a frame
    /// into the database file before capture has seen it. The WAL grows meanwhile;
    /// [`Replicator::start_pinned`] takes the pin over.
    pub async fn pin(db: &Path, cfg: &EngineConfig) -> Result<Pin, EngineError> {
        let (db, busy) = (db.to_path_buf(), cfg.busy_timeout);
        off_thread("pin", move || {
            capture::check_sqlite_file(&db)?;
            Connections::open(&db, busy).map(Pin)
        })
        .await
    }

    /// [`Replicator::start_leased`], taking over the connections of `pin`.
    pub async fn start_pinned(
        db: &Path,
        replica: Replica,
        cfg: EngineConfig,
        lease: Lease,
        pin: Option<Pin>,
    ) -> Result<Self, EngineError> {
        let shared = Arc::new(Shared::default());
        let lease_state = lease.state();
        let replica = Replica::new(Arc::new(Fenced::new(
            Arc::new(Counted::new(
                replica.client().clone(),
                shared.stats.requests.clone(),
            )),
            lease_state.clone(),
        )));
        // The only LIST of the run: from here on the manifest is kept in memory. A
        // store that falters here is waited for as the lease was.
        let files = crate::retry::while_transient(
            cfg.lease.wait,
            replica.url(),
            "listing the replica",
            || replica.list_files(None),
        )
        .await?;
        let manifest = Manifest::new(files);
        let remote_max = manifest.replica_max();
        let remote_snapshot = manifest.newest_snapshot();
        let manifest = Arc::new(Mutex::new(manifest));

        let db = db.to_path_buf();
        let capturer = {
            let (db, shared) = (db.clone(), shared.clone());
            off_thread("capture", move || {
                capture::Capturer::open(
                    &db,
                    cfg,
                    shared,
                    (remote_max, remote_snapshot),
                    pin.map(|p| p.0),
                )
            })
            .await?
        };
        // Files the backend creates, and the record a restore reads, follow the
        // database's mode (see `file_mode`).
        let mode = shared.db_mode();
        replica.client().set_file_mode(mode);
        // One spool, and so one pool of reusable files, for capture, shipper and
        // maintenance: capture draws files from the pool, the others return them.
        let spool = capturer.spool().clone();
        check_identity(&db, &replica, &spool, mode, remote_max == 0, &cfg).await?;
        let capture_exit = Arc::new(Notify::new());
        let capture = {
            let (shared, exit) = (shared.clone(), capture_exit.clone());
            std::thread::Builder::new()
                .name("replica-capture".into())
                .spawn(move || {
                    let r = capturer.run();
                    shared.requests.close();
                    if r.is_err() {
                        shared.failed.store(true, Ordering::Release);
                    }
                    shared.capture_done.store(true, Ordering::Release);
                    shared.ship.notify_one();
                    exit.notify_one();
                    r
                })
                .map_err(|source| EngineError::Io {
                    path: db.clone(),
                    source,
                })?
        };
        let maintenance = tokio::spawn(
            maintain::Maintenance {
                replica: replica.clone(),
                spool: spool.clone(),
                manifest: manifest.clone(),
                cfg,
                shared: shared.clone(),
            }
            .run(),
        );
        let modes = tokio::spawn(follow_modes(replica.clone(), shared.clone(), mode));
        let shipper = {
            let s = ship::Shipper {
                db: db.clone(),
                spool: spool.clone(),
                replica,
                cfg,
                shared: shared.clone(),
                manifest: manifest.clone(),
            };
            let (shared, exit) = (shared.clone(), capture_exit.clone());
            tokio::spawn(async move {
                let r = ship::run(s).await;
                if r.is_err() {
                    shared.failed.store(true, Ordering::Release);
                    exit.notify_one();
                }
                r
            })
        };
        info!(db = %db.display(), url = %lease_state.url(), "replicating");
        Ok(Self {
            db,
            spool,
            shared,
            capture: Some(capture),
            shipper: Some(shipper),
            maintenance: Some(maintenance),
            modes: Some(modes),
            capture_exit,
            lease: Some(lease),
            lease_state,
            manifest,
        })
    }

    pub fn db(&self) -> &Path {
        &self.db
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// The highest TXID in the replica, as this process knows it (its own uploads
    /// and the listing at start).
    pub fn remote_txid(&self) -> u64 {
        self.monitor().remote_txid()
    }

    /// Waits until everything committed to the database before the call is in the
    /// store, with no extra upload (see [`Monitor::sync`]); returns its TXID.
    pub async fn sync(&self, timeout: Duration) -> Result<u64, EngineError> {
        self.monitor().sync(timeout).await
    }

    /// A read transaction at exactly a TXID's state; see [`Monitor::consistent_read`].
    pub async fn consistent_read(&self) -> Result<ConsistentRead, EngineError> {
        self.monitor().consistent_read().await
    }

    /// Where replication stands now; see [`Monitor::status`].
    pub fn status(&self) -> Status {
        self.monitor().status()
    }

    /// A handle that reads [`Status`] for as long as it is kept, also after this
    /// replicator is shut down (it then reports what it last knew).
    pub fn monitor(&self) -> Monitor {
        Monitor {
            db: self.db.clone(),
            spool: self.spool.clone(),
            shared: Arc::clone(&self.shared),
            manifest: Arc::clone(&self.manifest),
            lease_state: Arc::clone(&self.lease_state),
        }
    }

    /// Resolves if replication stops on its own, which only an error does: capture
    /// or the shipper failed, or the lease was lost.
    pub async fn failed(&self) {
        loop {
            if self.shared.failed.load(Ordering::Acquire) || self.lease_state.is_lost() {
                return;
            }
            tokio::select! {
                _ = self.capture_exit.notified() => {}
                _ = self.lease_state.lost() => {}
            }
        }
    }

    /// Stops capture after spooling everything committed, then uploads the spool,
    /// retrying for up to `flush_timeout`.
    pub async fn shutdown(mut self, flush_timeout: Duration) -> Result<(), EngineError> {
        self.shared.request_stop();
        // Compaction and retention can wait for the next run; the flush cannot.
        if let Some(m) = self.maintenance.take() {
            m.abort();
        }
        if let Some(m) = self.modes.take() {
            m.abort();
        }
        let capture = self.capture.take();
        let captured = off_thread("capture", move || match capture {
            Some(h) => h.join().map_err(|_| EngineError::Panicked("capture"))?,
            None => Ok(()),
        })
        .await;
        let shipped = match self.shipper.take() {
            Some(h) => match tokio::time::timeout(flush_timeout, h).await {
                Ok(r) => r.map_err(|e| EngineError::joined("shipper", &e))?,
                Err(_) => {
                    let files = self.spool.pending()?.len();
                    let dir = self.spool.dir().to_path_buf();
                    Err(EngineError::FlushIncomplete { files, dir })
                }
            },
            None => Ok(()),
        };
        if self.lease_state.is_lost() {
            return Err(EngineError::LeaseLost {
                db: self.db.clone(),
                url: self.lease_state.url().to_owned(),
                holder: self.lease_state.lost_to(),
            });
        }
        captured?;
        shipped?;
        // Clean: everything captured is in the replica; the next owner may start now.
        if let Some(lease) = self.lease.take() {
            lease.release().await;
        }
        Ok(())
    }
}

/// Refuses a replica that holds another database, records this one's identity
/// there and in the spool.
async fn check_identity(
    db: &Path,
    replica: &Replica,
    spool: &Spool,
    mode: FileMode,
    replica_empty: bool,
    cfg: &EngineConfig,
) -> Result<(), EngineError> {
    let io = |source| EngineError::Io {
        path: spool.dir().join(root_record::LOCAL_ID_FILE),
        source,
    };
    let local_id = root_record::read_local_id(spool.dir()).map_err(io)?;
    let name = db
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let local = root_record::LocalDatabase {
        name: &name,
        id: local_id.as_deref(),
        replica_empty,
        take_over: cfg.take_over_replica,
    };
    let identity = root_record::ensure(replica.client().as_ref(), mode, &local)
        .await
        .map_err(|e| match e {
            root_record::EnsureError::Store(e) => EngineError::Store(e),
            root_record::EnsureError::Foreign(e) => EngineError::Foreign(e),
        })?;
    root_record::write_local_id(spool.dir(), &identity.id, mode).map_err(io)
}

impl Drop for Replicator {
    fn drop(&mut self) {
        self.shared.request_stop();
        if let Some(m) = self.maintenance.take() {
            m.abort();
        }
        if let Some(m) = self.modes.take() {
            m.abort();
        }
    }
}

/// When capture finds the database replaced by a file with another mode, the backend
/// creates files with the new one and the replica's record says it.
async fn follow_modes(replica: Replica, shared: Arc<Shared>, mut recorded: FileMode) {
    loop {
        shared.mode_changed.notified().await;
        let mode = shared.db_mode();
        replica.client().set_file_mode(mode);
        if mode == recorded {
            continue;
        }
        match root_record::ensure_mode(replica.client().as_ref(), mode).await {
            Ok(()) => recorded = mode,
            // The next start writes it; until then a restore uses the old mode.
            Err(e) => {
                warn!(url = %replica.url(), error = %Chain(&e), "could not record the database's new mode")
            }
        }
    }
}
