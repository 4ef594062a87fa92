//! The capture loop: turns committed WAL frames into LTX files in the spool, runs the
//! replicator's own checkpoints, and takes snapshots. One thread per database.
//!
//! One concern a file: `cursor` (where capture stands in the WAL), `schedule` (when
//! to ship, checkpoint and snapshot), `identity` (is the path still our file),
//! `snapshot` and `checkpoint`; this file holds the loop and spools L0 files.
//!
//! Position invariants (see ARCHITECTURE.md):
//! * `cursor.spooled` is the WAL position of the last spooled file; `cursor.batch`
//!   holds committed frames scanned after it (offsets only: the pages stay in the WAL,
//!   which our read transaction keeps from being reset).
//! * `cursor.generation.pages` indexes every frame of the current WAL generation up to
//!   `spooled`, so a snapshot can combine the WAL with the database file without any
//!   lock.
//! * Our read transaction is held from start-up to shutdown, and moved forward only
//!   under the write barrier after a seal; so a WAL reset never loses a frame we have
//!   not captured. Continuity across restarts is proven from the WAL's chained
//!   checksums; without that proof the next file is a new snapshot, never a gap.

mod checkpoint;
mod cursor;
mod identity;
mod schedule;
mod snapshot;

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, info, warn};

use super::points::{ConsistentRead, Request};
use super::sqlite::Connections;
use super::status::now_ms;
use super::watch::{IDLE_WAIT, WalWatch};
use super::{EngineConfig, EngineError, Shared};
use crate::error::Chain;
use crate::file_mode::FileMode;
use crate::layout::SNAPSHOT_LEVEL;
use crate::ltx::{FLAG_NO_CHECKSUM, Header, LtxError};
use crate::spool::{Durability, Spool, SpoolState};
use crate::wal::{self, WalHeader, WalPosition};
use cursor::WalCursor;
use identity::Identity;
use schedule::Schedule;

/// The disk holding the database and its spool is full: capture pauses with a
/// growing backoff, says so once, and says so again when space returns.
#[derive(Debug, Default)]
struct DiskFull {
    since: Option<Instant>,
    backoff: Duration,
}

impl DiskFull {
    fn pause(&mut self, db: &Path, e: &EngineError, shared: &Shared) {
        if self.since.is_none() {
            warn!(db = %db.display(), error = %Chain(e), "the disk is full: capture pauses and retries; nothing committed is lost, and replication catches up once space is freed");
            shared.stats.errors.record(e.kind());
            if let Ok(mut p) = shared.progress.lock() {
                p.disk_full = true;
            }
            self.since = Some(Instant::now());
            self.backoff = Duration::from_millis(200);
        }
        shared
            .stats
            .disk_full_pauses
            .fetch_add(1, Ordering::Relaxed);
        shared.wait_stop(self.backoff);
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
    }

    fn cleared(&mut self, db: &Path, shared: &Shared) {
        if let Some(since) = self.since.take() {
            if let Ok(mut p) = shared.progress.lock() {
                p.disk_full = false;
            }
            info!(db = %db.display(), paused_s = since.elapsed().as_secs(), "disk space is available again; capture resumed");
        }
    }
}

/// Why a snapshot is needed, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotReason {
    EmptyReplica,
    NoContinuity,
    WalReset,
    Interval,
    /// The database file at the path is a different file than the one replicated.
    Replaced,
    /// Asked for (`snapshot_at_start`).
    Requested,
}

/// One word per reason, so that a log line's `reason=` field stays one token.
impl std::fmt::Display for SnapshotReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SnapshotReason::EmptyReplica => "empty_replica",
            SnapshotReason::NoContinuity => "no_continuity",
            SnapshotReason::WalReset => "wal_reset",
            SnapshotReason::Interval => "interval",
            SnapshotReason::Replaced => "file_replaced",
            SnapshotReason::Requested => "requested",
        })
    }
}

/// One database's capture: its files and connections, where it stands in the WAL
/// ([`WalCursor`]), its clocks ([`Schedule`]) and the watch on the file's identity
/// ([`Identity`]).
#[derive(Debug)]
pub struct Capturer {
    // Field order is drop order: the connections must close before `db_file`, because
    // closing any descriptor of the database drops this process's SQLite locks on it.
    conns: Option<Connections>,
    db_file: File,
    db_path: PathBuf,
    wal_path: PathBuf,
    spool: Spool,
    cfg: EngineConfig,
    shared: Arc<Shared>,
    page_size: u32,
    /// TXID of the last spooled file.
    txid: u64,
    cursor: WalCursor,
    schedule: Schedule,
    identity: Identity,
}

pub(super) fn wal_path_of(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

impl Capturer {
    /// The spool, shared with the shipper and maintenance: one pool of reusable files.
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Opens the database (or takes over `pinned`, connections opened earlier whose
    /// read transaction has held the WAL since), proves (or gives up on) continuity
    /// with the spool, and decides whether the first action is a snapshot.
    /// `remote_max` is the highest TXID in the replica (0 when empty).
    pub fn open(
        db_path: &Path,
        cfg: EngineConfig,
        shared: Arc<Shared>,
        remote: (u64, Option<(u64, Option<SystemTime>)>),
        pinned: Option<Connections>,
    ) -> Result<Self, EngineError> {
        let (remote_max, remote_snapshot) = remote;
        let conns = match pinned {
            // Checked when it was pinned. Not again: closing a descriptor of the
            // database file drops every POSIX lock this process holds on it, the
            // pinned connections' included, and a writer's close could then
            // checkpoint and delete the WAL under us.
            Some(c) => c,
            None => {
                check_sqlite_file(db_path)?;
                Connections::open(db_path, cfg.busy_timeout)?
            }
        };
        let page_size = conns.page_size(db_path)?;
        let db_file = File::open(db_path).map_err(|source| EngineError::Io {
            path: db_path.to_path_buf(),
            source,
        })?;
        let meta = db_file.metadata().map_err(|source| EngineError::Io {
            path: db_path.to_path_buf(),
            source,
        })?;
        // Opened only once the database is known to be one, so a bad path leaves no
        // spool behind.
        let mode = FileMode::of(&meta);
        let spool = Spool::open(db_path, mode)?;
        shared.db_mode.store(mode.bits(), Ordering::Relaxed);
        let mut c = Self {
            conns: Some(conns),
            db_file,
            db_path: db_path.to_path_buf(),
            wal_path: wal_path_of(db_path),
            spool,
            schedule: Schedule::new(&cfg, remote_snapshot),
            cfg,
            shared,
            page_size,
            txid: remote_max,
            cursor: WalCursor::default(),
            identity: Identity::new((meta.dev(), meta.ino())),
        };
        c.resume(remote_max)?;
        if c.cfg.snapshot_at_start {
            c.schedule
                .snapshot_due
                .get_or_insert(SnapshotReason::Requested);
        }
        if let Ok(mut p) = c.shared.progress.lock() {
            p.local_txid = c.txid;
            if !c.spool.pending()?.is_empty() {
                p.unshipped_since_ms = Some(now_ms());
            }
        }
        Ok(c)
    }

    fn resume(&mut self, remote_max: u64) -> Result<(), EngineError> {
        let state = self.spool.load_state();
        let pending = self.spool.pending()?;
        let header = self.read_wal_header()?;

        // The spool continues the replica if its pending files extend it without a gap
        // up to the saved TXID.
        let chain_ok = pending.iter().all(|p| self.spool.verify(p))
            && state.is_some_and(|s| {
                let mut next = remote_max + 1;
                for p in &pending {
                    if p.id.level == SNAPSHOT_LEVEL {
                        next = next.max(p.id.range.max + 1);
                    } else if p.id.range.min <= next && p.id.range.max >= next {
                        next = p.id.range.max + 1;
                    } else if p.id.range.max < next {
                        continue;
                    } else {
                        return false;
                    }
                }
                next == s.txid + 1 || (pending.is_empty() && s.txid == remote_max)
            });
        let resumable = match (state, header) {
            (Some(s), Some(h))
                if chain_ok
                    && s.page_size == self.page_size
                    && (s.db_dev, s.db_ino) == self.identity.id =>
            {
                s.position
                    .filter(|p| p.salt1 == h.salt1 && p.salt2 == h.salt2)
            }
            _ => None,
        };

        // A database that `restore` wrote and nothing touched since: it is exactly the
        // replica's head, and the next WAL generation continues it.
        if let (Some(s), None) = (state, header)
            && chain_ok
            && pending.is_empty()
            && s.txid == remote_max
            && s.page_size == self.page_size
            && self
                .db_file
                .metadata()
                .is_ok_and(|m| s.describes_unchanged(&m))
        {
            info!(db = %self.db_path.display(), txid = format!("{:016x}", s.txid), "resuming replication of a restored database");
            self.txid = s.txid;
            return Ok(());
        }

        if let (Some(pos), Some(h), Some(s)) = (resumable, header, state) {
            // Re-walk the generation up to the saved position: it rebuilds the page
            // index and proves, through the chained checksums, that the WAL still holds
            // exactly the frames we captured.
            let frames = (pos.offset - wal::WAL_HEADER_SIZE) / h.frame_size();
            let wal = self.open_wal()?;
            let scan = wal::scan(&wal, &h, WalPosition::start(&h), Some(frames))
                .map_err(|e| self.wal_io(e))?;
            if scan.end == pos {
                info!(db = %self.db_path.display(), txid = format!("{:016x}", s.txid), "resuming replication from the spool");
                self.txid = s.txid;
                self.cursor.resume(h, scan, pos);
                return Ok(());
            }
        }

        // No provable continuity: everything spooled is superseded by a new snapshot.
        for p in &pending {
            self.spool.remove(p)?;
        }
        self.txid = remote_max;
        self.schedule.snapshot_due = Some(if remote_max == 0 {
            SnapshotReason::EmptyReplica
        } else {
            SnapshotReason::NoContinuity
        });
        Ok(())
    }

    fn wal_io(&self, source: std::io::Error) -> EngineError {
        EngineError::Io {
            path: self.wal_path.clone(),
            source,
        }
    }

    fn open_wal(&self) -> Result<File, EngineError> {
        File::open(&self.wal_path).map_err(|e| self.wal_io(e))
    }

    fn read_wal_header(&self) -> Result<Option<WalHeader>, EngineError> {
        // Opening and closing -wal is safe: SQLite holds no POSIX locks on it.
        match File::open(&self.wal_path) {
            Ok(f) => wal::read_header(&f).map_err(|e| self.wal_io(e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.wal_io(e)),
        }
    }

    /// Runs until `stop` is set, then spools everything committed so far.
    pub fn run(mut self) -> Result<(), EngineError> {
        let mut full = DiskFull::default();
        // The base snapshot comes before any L0 file, even if the disk is full now.
        while let Some(reason) = self.schedule.snapshot_due.take() {
            match self.snapshot(reason) {
                Ok(()) => full.cleared(&self.db_path, &self.shared),
                Err(e) if e.is_disk_full() && !self.shared.stop.load(Ordering::Acquire) => {
                    self.schedule.snapshot_due = Some(reason);
                    full.pause(&self.db_path, &e, &self.shared);
                }
                Err(e) => return Err(e),
            }
        }
        let mut watch = WalWatch::new(&self.wal_path);
        if let Ok(mut w) = self.shared.capture_waker.lock() {
            *w = Some(watch.waker());
        }
        let mut last_tick = Instant::now();
        let mut last_change = last_tick;
        loop {
            let stopping = self.shared.stop.load(Ordering::Acquire);
            match self.tick(stopping) {
                Ok(()) => full.cleared(&self.db_path, &self.shared),
                // Nothing is lost while the disk is full: the WAL keeps every frame
                // (our read transaction stops SQLite from resetting it), and what
                // failed is retried as it was.
                Err(e) if e.is_disk_full() && !stopping => {
                    full.pause(&self.db_path, &e, &self.shared);
                    continue;
                }
                Err(e) => return Err(e),
            }
            if stopping {
                break;
            }
            self.serve_requests();
            last_tick = Instant::now();
            self.wait_for_change(&mut watch, last_tick, &mut last_change);
        }
        if let Some(conns) = self.conns.take() {
            conns.close(&self.db_path)?;
        }
        // The only fsync of the spool: a clean stop resumes without a snapshot even
        // after a power loss.
        let pending: Vec<PathBuf> = self.spool.pending()?.into_iter().map(|p| p.path).collect();
        self.spool.sync(&pending)?;
        info!(db = %self.db_path.display(), txid = format!("{:016x}", self.txid), "capture stopped");
        Ok(())
    }

    /// Sleeps until the WAL changes (or may have), a deadline of ours comes, or a
    /// stop is requested; never wakes more often than `poll_interval`, so a busy writer
    /// is read in batches.
    fn wait_for_change(&self, watch: &mut WalWatch, last_tick: Instant, last_change: &mut Instant) {
        let mut wait = IDLE_WAIT;
        if let Some(ship) = self
            .schedule
            .ship_wait(&self.cfg, !self.cursor.batch.is_empty())
        {
            wait = wait.min(ship);
        }
        if watch.is_active() {
            if watch.wait(wait) {
                *last_change = Instant::now();
                let since = last_tick.elapsed();
                if since < self.cfg.poll_interval {
                    self.shared.wait_stop(self.cfg.poll_interval - since);
                }
            }
        } else {
            // Polling: fast while the WAL changes, slow once it has been quiet.
            if self.identity.wal_stat_moved {
                *last_change = Instant::now();
            }
            let quiet = last_change.elapsed() >= Duration::from_secs(1);
            let poll = if quiet {
                wait
            } else {
                wait.min(self.cfg.poll_interval)
            };
            self.shared.wait_stop(poll.max(Duration::from_millis(1)));
        }
    }

    fn tick(&mut self, force: bool) -> Result<(), EngineError> {
        if self.identity.replaced {
            // Nothing of the old file can be captured any more; the new one starts a new
            // history once it exists.
            self.reopen()?;
            return Ok(());
        }
        if force || self.identity.wal_changed(&self.wal_path, &self.db_path) {
            self.advance()?;
        }
        let now = Instant::now();
        let batch = !self.cursor.batch.is_empty();
        if self.schedule.ship_due(now, &self.cfg, batch, force) {
            // The shipper sends what is spooled when told to, and only then: at most
            // once per interval, at once after a quiet one, and at a stop.
            self.ship(now)?;
        } else if self.cursor.batch.frames >= self.cfg.checkpoint_pages {
            self.spool_batch(SPOOL_DURABILITY)?;
        }
        if force {
            return Ok(());
        }
        if std::mem::take(&mut self.schedule.repin_due) {
            self.repin()?;
        }
        if let Some(reason) = self.schedule.snapshot_due.take() {
            if let Err(e) = self.snapshot(reason) {
                // Still due: a failed snapshot is retried, never skipped.
                self.schedule.snapshot_due.get_or_insert(reason);
                return Err(e);
            }
        } else if self.schedule.snapshot_interval_due(now, &self.cfg) {
            self.snapshot(SnapshotReason::Interval)?;
        }
        if self
            .schedule
            .checkpoint_due(now, &self.cfg, self.cursor.spooled_frames())
        {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Scans newly committed frames into the batch, following WAL resets.
    fn advance(&mut self) -> Result<(), EngineError> {
        self.advance_bounded(None).map(|_| ())
    }

    /// [`Self::advance`] reading at most about `max_frames` frames; returns whether the
    /// bound was reached (more committed frames may remain).
    fn advance_bounded(&mut self, max_frames: Option<u64>) -> Result<bool, EngineError> {
        let Some(h) = self.read_wal_header()? else {
            // No WAL, or truncated: nothing to read until a writer starts a generation.
            return Ok(false);
        };
        if !self.cursor.is_generation(&h) {
            let known = self.cursor.generation.is_some();
            if known {
                // A WAL we have not seen: make sure it belongs to our file before
                // following it, or a replaced database's frames would land on the old
                // history.
                self.identity.check(&self.db_path);
                if self.identity.replaced {
                    return Ok(false);
                }
            }
            if h.page_size != self.page_size {
                return Err(EngineError::PageSizeChanged {
                    path: self.db_path.clone(),
                    was: self.page_size,
                    now: h.page_size,
                });
            }
            // While our read transaction is held, a reset can only follow a complete
            // backfill with nothing after our position: either our own checkpoint, or
            // the one reset READ(0) allows, which can happen only before any new frame is
            // appended. Either way nothing is lost, and we follow from offset 32.
            debug!(db = %self.db_path.display(), salt1 = h.salt1, "new WAL generation");
            let lost = self.cursor.start_generation(h);
            self.schedule.checkpoint_base(0);
            self.schedule.repin_due = true;
            if lost {
                // Only possible if the read transaction was lost: the batch's frames
                // are gone, so is continuity.
                warn!(db = %self.db_path.display(), "WAL reset with uncaptured frames; taking a snapshot");
                self.schedule.snapshot_due = Some(SnapshotReason::WalReset);
            } else if known && self.schedule.snapshot_due.is_none() {
                // Record the new generation now rather than at the next spooled file: a
                // crash in between could otherwise not prove continuity and would
                // snapshot.
                self.save_state(SPOOL_DURABILITY)?;
            }
        }
        let from = self.cursor.scan_from(&h);
        let wal = self.open_wal()?;
        let scan = wal::scan(&wal, &h, from, max_frames).map_err(|e| self.wal_io(e))?;
        let frames = scan.frames;
        self.cursor.take(scan);
        Ok(max_frames.is_some_and(|m| frames >= m))
    }

    /// Spools the batch and tells the shipper to send everything spooled.
    fn ship(&mut self, now: Instant) -> Result<(), EngineError> {
        self.spool_batch(SPOOL_DURABILITY)?;
        self.schedule.shipped(now);
        self.shared.ship_due.store(true, Ordering::Release);
        self.shared.notify_shipper();
        Ok(())
    }

    /// Spools the batch as the next L0 file, if there is one.
    fn spool_batch(&mut self, durability: Durability) -> Result<(), EngineError> {
        let Some(batch) = self.cursor.unspooled() else {
            return Ok(());
        };
        let txid = self.txid + 1;
        let header = Header {
            flags: FLAG_NO_CHECKSUM,
            page_size: self.page_size,
            commit: batch.db_pages,
            min_txid: txid,
            max_txid: txid,
            timestamp_ms: now_ms(),
            wal_offset: batch.start.offset as i64,
            wal_size: (batch.end.offset - batch.start.offset) as i64,
            wal_salt1: batch.end.salt1,
            wal_salt2: batch.end.salt2,
            ..Header::default()
        };
        let wal = self.open_wal()?;
        let mut buf = vec![0u8; self.page_size as usize];
        let written = self.spool.write_ltx(0, header, durability, |enc| {
            for (&pgno, &off) in batch.pages.range(..=batch.db_pages) {
                if !wal::read_frame_page(&wal, batch.header, off, &mut buf)? {
                    return Err(LtxError::Io(std::io::Error::other(
                        "WAL frame was overwritten before it was spooled",
                    )));
                }
                enc.write_page(pgno, &buf)?;
            }
            Ok(())
        })?;
        self.cursor.mark_spooled();
        self.txid = txid;
        self.schedule.spooled();
        self.save_state(durability)?;
        self.shared.stats.ltx_files.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut p) = self.shared.progress.lock() {
            p.spooled(txid, header.timestamp_ms);
        }
        debug!(db = %self.db_path.display(), file = %written.id, "spooled");
        Ok(())
    }

    fn save_state(&self, durability: Durability) -> Result<(), EngineError> {
        self.spool.save_state(
            &SpoolState {
                txid: self.txid,
                position: self.cursor.spooled,
                page_size: self.page_size,
                db_dev: self.identity.id.0,
                db_ino: self.identity.id.1,
                db_len: None,
                db_mtime_ns: None,
            },
            durability,
        )?;
        Ok(())
    }
}

impl Capturer {
    /// Answers what callers asked since the last tick (see `engine::points`).
    fn serve_requests(&mut self) {
        for request in self.shared.requests.take() {
            match request {
                Request::CommitPoint(tx) => {
                    let _ = tx.send(self.commit_point());
                }
                Request::ShipNow(tx) => {
                    let r = self
                        .commit_point()
                        .and_then(|txid| self.ship(Instant::now()).map(|()| txid));
                    let _ = tx.send(r);
                }
                Request::ConsistentRead(tx) => {
                    let _ = tx.send(self.consistent_read());
                }
            }
        }
    }

    /// The TXID that will hold everything committed so far: the batch's, once it is
    /// spooled (or a snapshot that includes it), or the last spooled file's.
    fn commit_point(&mut self) -> Result<u64, EngineError> {
        self.advance()?;
        Ok(self.txid + u64::from(!self.cursor.batch.is_empty()))
    }

    fn consistent_read(&mut self) -> Result<ConsistentRead, EngineError> {
        let busy = self.cfg.busy_timeout;
        match self.under_barrier(|c, _| {
            crate::content::open_read(&c.db_path, busy).map_err(|source| EngineError::Sqlite {
                path: c.db_path.clone(),
                source,
            })
        })? {
            Some(conn) => {
                // Before anything else is spooled: an upload may merge up to this
                // file, never past it.
                if let Ok(mut b) = self.shared.boundaries.lock() {
                    b.insert(self.txid);
                }
                Ok(ConsistentRead {
                    txid: self.txid,
                    conn,
                })
            }
            None => Err(EngineError::WriteLockBusy {
                path: self.db_path.clone(),
            }),
        }
    }
}

/// Spool writes are not fsynced while replicating. An fsync on ext4 commits the
/// journal, which in data=ordered mode also writes out the application's freshly
/// appended WAL blocks: a few hundred of them a second under a busy writer cost it a
/// third of its throughput (measured). Nothing depends on them: after a power loss,
/// resuming verifies every spooled file and the chain from the replica's head, and
/// anything torn or missing means a snapshot from the database file, which SQLite's
/// own checkpoints keep durable.
const SPOOL_DURABILITY: Durability = Durability::Deferred;

/// Refuses anything that is not a SQLite database before SQLite gets to touch it.
pub(super) fn check_sqlite_file(path: &Path) -> Result<(), EngineError> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // SQLite would only say "unable to open database file".
            return match path.parent().filter(|p| !p.as_os_str().is_empty()) {
                Some(dir) if !dir.is_dir() => Err(EngineError::Io {
                    path: dir.to_path_buf(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the database's directory does not exist",
                    ),
                }),
                _ => Ok(()),
            };
        }
        Err(source) => {
            return Err(EngineError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut magic = [0u8; 16];
    if f.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(EngineError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        return Ok(());
    }
    if len < 100 || f.read_exact_at(&mut magic, 0).is_err() || &magic != b"SQLite format 3\0" {
        return Err(EngineError::NotSqlite {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}
