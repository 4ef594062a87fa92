//! The capture loop: turns committed WAL frames into LTX files in the spool, runs the
//! replicator's own checkpoints, and takes snapshots. One thread per database.
//!
//! Position invariants (see ARCHITECTURE.md):
//! * `cut` is the WAL position of the last spooled file; `batch` holds committed frames
//!   scanned after it (offsets only: the pages stay in the WAL, which our read
//!   transaction keeps from being reset).
//! * `generation.pages` indexes every frame of the current WAL generation up to `cut`,
//!   so a snapshot can combine the WAL with the database file without any lock.
//! * Our read transaction is held from start-up to shutdown, and moved forward only
//!   under the write barrier after a seal; so a WAL reset never loses a frame we have
//!   not captured. Continuity across restarts is proven from the WAL's chained
//!   checksums; without that proof the next file is a new snapshot, never a gap.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{debug, info, warn};

use super::spool::{Durability, Spool, SpoolState};
use super::sqlite::Connections;
use super::watch::{IDLE_WAIT, WalWatch};
use super::{EngineConfig, EngineError, Shared};
use crate::error::Chain;
use crate::file_mode::FileMode;
use crate::layout::SNAPSHOT_LEVEL;
use crate::ltx::{self, FLAG_NO_CHECKSUM, Header, LtxError};
use crate::wal::{self, WalHeader, WalPosition};

/// Frames of the current WAL generation that are already spooled.
#[derive(Debug)]
struct Generation {
    header: WalHeader,
    /// pgno → offset of its newest frame at or before `cut`.
    pages: BTreeMap<u32, u64>,
    /// Database size in pages at the last spooled commit of this generation.
    commit: Option<u32>,
}

#[derive(Debug, Default)]
struct Batch {
    end: Option<WalPosition>,
    pages: BTreeMap<u32, u64>,
    commit: Option<u32>,
    frames: u64,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.frames == 0
    }
}

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

    fn cleared(&mut self, db: &Path) {
        if let Some(since) = self.since.take() {
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
}

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
    db_id: (u64, u64),
    txid: u64,
    generation: Option<Generation>,
    cut: Option<WalPosition>,
    batch: Batch,
    snapshot_due: Option<SnapshotReason>,
    /// When the sync-interval timer last shipped: only timer cuts move it, so cuts
    /// made early (by a checkpoint or a large batch) never postpone shipping.
    last_ship: Instant,
    /// Files cut since `last_ship` that the shipper has not been told to send.
    unshipped: bool,
    last_checkpoint: Instant,
    /// Captured frames of this generation when the last checkpoint ran: a checkpoint is
    /// due only once the WAL has grown past it again.
    checkpoint_attempt_frames: u64,
    last_snapshot: Instant,
    last_wal_stat: Option<(u64, u64, i64, i64)>,
    last_full_check: Instant,
    /// Set when the path names another file than `db_file`; cleared by [`Self::reopen`].
    replaced: bool,
    missing_logged: bool,
    /// The WAL's `stat` differed at the last tick (drives the polling fallback).
    wal_stat_moved: bool,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn wal_path_of(db: &Path) -> PathBuf {
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
        let now = Instant::now();
        // The snapshot clock continues from the replica's newest snapshot, so restarts
        // neither postpone snapshots for ever nor add one per start.
        let mut last_snapshot = now;
        if let Some((txid, created)) = remote_snapshot {
            shared.last_snapshot_txid.store(txid, Ordering::Relaxed);
            let age = created
                .and_then(|c| SystemTime::now().duration_since(c).ok())
                .unwrap_or_default()
                .min(cfg.snapshot_interval);
            last_snapshot = now.checked_sub(age).unwrap_or(now);
        }
        let mut c = Self {
            conns: Some(conns),
            db_file,
            db_path: db_path.to_path_buf(),
            wal_path: wal_path_of(db_path),
            spool,
            cfg,
            shared,
            page_size,
            db_id: (meta.dev(), meta.ino()),
            txid: remote_max,
            generation: None,
            cut: None,
            batch: Batch::default(),
            snapshot_due: None,
            last_ship: now - cfg.sync_interval,
            unshipped: false,
            last_checkpoint: now,
            checkpoint_attempt_frames: 0,
            last_snapshot,
            last_wal_stat: None,
            last_full_check: now,
            replaced: false,
            missing_logged: false,
            wal_stat_moved: false,
        };
        c.resume(remote_max)?;
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
                    && (s.db_dev, s.db_ino) == self.db_id =>
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
                self.generation = Some(Generation {
                    header: h,
                    pages: scan.pages,
                    commit: scan.commit,
                });
                self.cut = Some(pos);
                return Ok(());
            }
        }

        // No provable continuity: everything spooled is superseded by a new snapshot.
        for p in &pending {
            self.spool.remove(p)?;
        }
        self.txid = remote_max;
        self.snapshot_due = Some(if remote_max == 0 {
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
        while let Some(reason) = self.snapshot_due.take() {
            match self.snapshot(reason) {
                Ok(()) => full.cleared(&self.db_path),
                Err(e) if e.is_disk_full() && !self.shared.stop.load(Ordering::Acquire) => {
                    self.snapshot_due = Some(reason);
                    full.pause(&self.db_path, &e, &self.shared);
                }
                Err(e) => return Err(e),
            }
        }
        let mut watch = WalWatch::new(&self.wal_path);
        let mut last_tick = Instant::now();
        let mut last_change = last_tick;
        loop {
            let stopping = self.shared.stop.load(Ordering::Acquire);
            match self.tick(stopping) {
                Ok(()) => full.cleared(&self.db_path),
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
        if !self.batch.is_empty() || self.unshipped {
            let ship_at = self.last_ship + self.cfg.sync_interval;
            wait = wait.min(ship_at.saturating_duration_since(Instant::now()));
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
            if self.last_wal_stat_changed() {
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

    /// Whether the last tick saw the WAL's `stat` change (see [`Self::wal_changed`]).
    fn last_wal_stat_changed(&self) -> bool {
        self.wal_stat_moved
    }

    fn tick(&mut self, force: bool) -> Result<(), EngineError> {
        if self.replaced {
            // Nothing of the old file can be captured any more; the new one starts a new
            // history once it exists.
            self.reopen()?;
            return Ok(());
        }
        if force || self.wal_changed() {
            self.advance()?;
        }
        let now = Instant::now();
        let due = now.duration_since(self.last_ship) >= self.cfg.sync_interval;
        if (force || due) && (!self.batch.is_empty() || self.unshipped) {
            // Ship what is captured now: at most once per interval, and at once for the
            // first change after a quiet interval.
            self.cut(SPOOL_DURABILITY)?;
            self.last_ship = now;
            self.unshipped = false;
            self.shared.ship_due.store(true, Ordering::Release);
            self.shared.notify_shipper();
        } else if self.batch.frames >= self.cfg.checkpoint_pages {
            self.cut(SPOOL_DURABILITY)?;
        }
        if force {
            return Ok(());
        }
        if let Some(reason) = self.snapshot_due.take() {
            if let Err(e) = self.snapshot(reason) {
                // Still due: a failed snapshot is retried, never skipped.
                self.snapshot_due.get_or_insert(reason);
                return Err(e);
            }
        } else if now.duration_since(self.last_snapshot) >= self.cfg.snapshot_interval {
            self.snapshot(SnapshotReason::Interval)?;
        }
        let wal_frames = self.generation_frames();
        let grown = wal_frames.saturating_sub(self.checkpoint_attempt_frames);
        if grown >= self.cfg.checkpoint_pages
            || (grown > 0
                && now.duration_since(self.last_checkpoint) >= self.cfg.checkpoint_interval)
        {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Frames of the current generation that are captured (and so count toward the
    /// checkpoint threshold).
    fn generation_frames(&self) -> u64 {
        match (&self.generation, self.cut) {
            (Some(g), Some(c)) if c.salt1 == g.header.salt1 && c.salt2 == g.header.salt2 => {
                (c.offset - wal::WAL_HEADER_SIZE) / g.header.frame_size()
            }
            _ => 0,
        }
    }

    /// A cheap check (one stat) for "the WAL may have changed"; a full check runs at
    /// least once a second anyway.
    fn wal_changed(&mut self) -> bool {
        let st = std::fs::metadata(&self.wal_path)
            .ok()
            .map(|m| (m.ino(), m.len(), m.mtime(), m.mtime_nsec()));
        let now = Instant::now();
        self.wal_stat_moved = st != self.last_wal_stat;
        if st != self.last_wal_stat
            || now.duration_since(self.last_full_check) >= Duration::from_secs(1)
        {
            self.last_wal_stat = st;
            self.last_full_check = now;
            self.check_identity();
            true
        } else {
            false
        }
    }

    /// Notes whether the path still names the file we replicate (one `stat`).
    fn check_identity(&mut self) {
        let now = std::fs::metadata(&self.db_path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if now != Some(self.db_id) {
            self.replaced = true;
        }
    }

    /// Follows a database replaced underneath us (deleted and recreated, restored
    /// over, renamed into place): new connections on the new file and a snapshot,
    /// because its history is not ours. Waits while the path is absent.
    fn reopen(&mut self) -> Result<(), EngineError> {
        let meta = match std::fs::metadata(&self.db_path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !self.missing_logged {
                    warn!(db = %self.db_path.display(), "database file was removed; replication resumes when it is back");
                    self.missing_logged = true;
                }
                return Ok(());
            }
            Err(source) => {
                return Err(EngineError::Io {
                    path: self.db_path.clone(),
                    source,
                });
            }
        };
        warn!(db = %self.db_path.display(), "database file was replaced; replicating the new file from a snapshot");
        if let Some(old) = self.conns.take()
            && let Err(e) = old.close(&self.db_path)
        {
            debug!(db = %self.db_path.display(), error = %Chain(&e), "closing the old database's connections");
        }
        check_sqlite_file(&self.db_path)?;
        let conns = Connections::open(&self.db_path, self.cfg.busy_timeout)?;
        self.page_size = conns.page_size(&self.db_path)?;
        self.conns = Some(conns);
        self.db_file = File::open(&self.db_path).map_err(|source| EngineError::Io {
            path: self.db_path.clone(),
            source,
        })?;
        let meta = self.db_file.metadata().unwrap_or(meta);
        self.db_id = (meta.dev(), meta.ino());
        self.follow_mode(FileMode::of(&meta))?;
        self.generation = None;
        self.cut = None;
        self.batch = Batch::default();
        self.last_wal_stat = None;
        self.replaced = false;
        self.missing_logged = false;
        self.snapshot(SnapshotReason::Replaced)
    }

    /// Gives the spool, and through the engine the replica, the mode of a replacing
    /// database file.
    fn follow_mode(&mut self, mode: FileMode) -> Result<(), EngineError> {
        if self.spool.mode() == mode {
            return Ok(());
        }
        info!(db = %self.db_path.display(), mode = %mode, "the new database file has another mode; the spool and the replica follow it");
        self.spool.set_mode(mode)?;
        self.shared.db_mode.store(mode.bits(), Ordering::Relaxed);
        self.shared.mode_changed.notify_one();
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
        let same_generation = self
            .generation
            .as_ref()
            .is_some_and(|g| g.header.salt1 == h.salt1 && g.header.salt2 == h.salt2);
        if !same_generation && self.generation.is_some() {
            // A WAL we have not seen: make sure it belongs to our file before following
            // it, or a replaced database's frames would land on the old history.
            self.check_identity();
            if self.replaced {
                return Ok(false);
            }
        }
        let followed_reset = !same_generation && self.generation.is_some() && self.batch.is_empty();
        if !same_generation {
            // While our read transaction is held, a reset can only follow a complete
            // backfill with nothing after our position: either our own checkpoint, or
            // the one reset READ(0) allows, which can happen only before any new frame is
            // appended. Either way nothing is lost, and we follow from offset 32.
            if !self.batch.is_empty() {
                // Only possible if the read transaction was lost: the batch's frames
                // are gone, so is continuity.
                warn!(db = %self.db_path.display(), "WAL reset with uncaptured frames; taking a snapshot");
                self.batch = Batch::default();
                self.snapshot_due = Some(SnapshotReason::WalReset);
            }
            if h.page_size != self.page_size {
                return Err(EngineError::PageSizeChanged {
                    path: self.db_path.clone(),
                    was: self.page_size,
                    now: h.page_size,
                });
            }
            debug!(db = %self.db_path.display(), salt1 = h.salt1, "new WAL generation");
            self.generation = Some(Generation {
                header: h,
                pages: BTreeMap::new(),
                commit: None,
            });
            self.cut = Some(WalPosition::start(&h));
            self.checkpoint_attempt_frames = 0;
            if followed_reset && self.snapshot_due.is_none() {
                // Record the new generation now rather than at the next cut: a crash in
                // between could otherwise not prove continuity and would snapshot.
                self.save_state(SPOOL_DURABILITY)?;
            }
        }
        let from = self
            .batch
            .end
            .or(self.cut)
            .unwrap_or_else(|| WalPosition::start(&h));
        let wal = self.open_wal()?;
        let scan = wal::scan(&wal, &h, from, max_frames).map_err(|e| self.wal_io(e))?;
        if scan.frames > 0 {
            self.batch.end = Some(scan.end);
            self.batch.pages.extend(scan.pages);
            self.batch.commit = scan.commit;
            self.batch.frames += scan.frames;
        }
        Ok(max_frames.is_some_and(|m| scan.frames >= m))
    }

    /// Spools the batch as the next L0 file; returns its path if there was a batch.
    fn cut(&mut self, durability: Durability) -> Result<Option<PathBuf>, EngineError> {
        let (Some(end), Some(commit), Some(g)) =
            (self.batch.end, self.batch.commit, self.generation.as_mut())
        else {
            return Ok(None);
        };
        let start = self.cut.unwrap_or_else(|| WalPosition::start(&g.header));
        let txid = self.txid + 1;
        let header = Header {
            flags: FLAG_NO_CHECKSUM,
            page_size: self.page_size,
            commit,
            min_txid: txid,
            max_txid: txid,
            timestamp_ms: now_ms(),
            wal_offset: start.offset as i64,
            wal_size: (end.offset - start.offset) as i64,
            wal_salt1: end.salt1,
            wal_salt2: end.salt2,
            ..Header::default()
        };
        let wal = File::open(&self.wal_path).map_err(|e| EngineError::Io {
            path: self.wal_path.clone(),
            source: e,
        })?;
        let gh = g.header;
        let pages = &self.batch.pages;
        let mut buf = vec![0u8; self.page_size as usize];
        let written = self.spool.write_ltx(0, header, durability, |enc| {
            for (&pgno, &off) in pages.range(..=commit) {
                if !wal::read_frame_page(&wal, &gh, off, &mut buf)? {
                    return Err(LtxError::Io(std::io::Error::other(
                        "WAL frame was overwritten before it was spooled",
                    )));
                }
                enc.write_page(pgno, &buf)?;
            }
            Ok(())
        })?;
        g.pages.extend(std::mem::take(&mut self.batch.pages));
        g.pages.retain(|&p, _| p <= commit);
        g.commit = Some(commit);
        self.batch = Batch::default();
        self.cut = Some(end);
        self.txid = txid;
        self.unshipped = true;
        self.save_state(durability)?;
        self.shared.stats.ltx_files.fetch_add(1, Ordering::Relaxed);
        debug!(db = %self.db_path.display(), file = %written.id, "spooled");
        self.shared.notify_shipper();
        Ok(Some(written.path))
    }

    fn save_state(&self, durability: Durability) -> Result<(), EngineError> {
        self.spool.save_state(
            &SpoolState {
                txid: self.txid,
                position: self.cut,
                page_size: self.page_size,
                db_dev: self.db_id.0,
                db_ino: self.db_id.1,
                db_len: None,
                db_mtime_ns: None,
            },
            durability,
        )?;
        Ok(())
    }

    /// Writes a full image of the database as of `cut` to the spool as level 9.
    /// Runs under our read transaction only: writers are never blocked, and pages read
    /// from the database file cannot change, because a checkpoint copies only frames
    /// at or below our read mark and those pages are taken from the WAL instead.
    fn snapshot(&mut self, reason: SnapshotReason) -> Result<(), EngineError> {
        let started = Instant::now();
        if reason == SnapshotReason::Interval {
            if self.batch.is_empty()
                && self.txid == self.shared.last_snapshot_txid.load(Ordering::Relaxed)
            {
                // Nothing changed since the last snapshot.
                self.last_snapshot = Instant::now();
                return Ok(());
            }
            if self.spool.has_pending(SNAPSHOT_LEVEL) {
                // The last one is not uploaded yet (an outage): another DB-sized file
                // would only grow the spool. Look again in a second.
                self.last_snapshot = Instant::now()
                    .checked_sub(self.cfg.snapshot_interval)
                    .map(|t| t + Duration::from_secs(1))
                    .unwrap_or_else(Instant::now);
                return Ok(());
            }
            self.advance()?;
            self.cut(SPOOL_DURABILITY)?;
        } else {
            // A fresh start of history: take the whole current WAL as the base.
            self.generation = None;
            self.cut = None;
            self.batch = Batch::default();
            self.advance()?;
            if let (Some(g), Some(end)) = (self.generation.as_mut(), self.batch.end) {
                g.pages.extend(std::mem::take(&mut self.batch.pages));
                if let Some(c) = self.batch.commit {
                    g.commit = Some(c);
                    g.pages.retain(|&p, _| p <= c);
                }
                self.cut = Some(end);
            }
            self.batch = Batch::default();
            self.txid += 1;
        }
        let txid = self.txid.max(1);
        self.txid = txid;

        for attempt in 0..2 {
            match self.write_snapshot(txid) {
                Ok(()) => break,
                Err(EngineError::WalRewound) if attempt == 0 => {
                    // Only possible while holding READ(0): the WAL was fully backfilled,
                    // so the database file alone is the image.
                    self.generation = None;
                    self.cut = None;
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        self.save_state(SPOOL_DURABILITY)?;
        self.last_snapshot = Instant::now();
        self.shared.stats.snapshots.fetch_add(1, Ordering::Relaxed);
        self.shared
            .last_snapshot_txid
            .store(txid, Ordering::Relaxed);
        info!(db = %self.db_path.display(), ?reason, txid = format!("{txid:016x}"), elapsed_ms = started.elapsed().as_millis() as u64, "snapshot spooled");
        self.shared.notify_shipper();
        Ok(())
    }

    fn write_snapshot(&self, txid: u64) -> Result<(), EngineError> {
        let ps = self.page_size;
        let commit = match self.generation.as_ref().and_then(|g| g.commit) {
            Some(c) => c,
            None => {
                let len = self
                    .db_file
                    .metadata()
                    .map_err(|source| EngineError::Io {
                        path: self.db_path.clone(),
                        source,
                    })?
                    .len();
                (len / u64::from(ps)) as u32
            }
        };
        if commit == 0 {
            return Err(EngineError::EmptyDatabase {
                path: self.db_path.clone(),
            });
        }
        let header = Header {
            flags: FLAG_NO_CHECKSUM,
            page_size: ps,
            commit,
            min_txid: 1,
            max_txid: txid,
            timestamp_ms: now_ms(),
            ..Header::default()
        };
        let wal = match &self.generation {
            Some(g) if !g.pages.is_empty() => Some((self.open_wal()?, g)),
            _ => None,
        };
        let lock = ltx::lock_pgno(ps);
        let mut buf = vec![0u8; ps as usize];
        let db_file = &self.db_file;
        let result =
            self.spool
                // A snapshot is the one large spool write: it is fsynced here, outside any
                // lock, so that a later fsync by SQLite under our barrier (a checkpoint)
                // does not have to push it out while the application waits.
                .write_ltx(SNAPSHOT_LEVEL, header, Durability::Now, |enc| {
                    for pgno in 1..=commit {
                        if pgno == lock {
                            continue;
                        }
                        match wal
                            .as_ref()
                            .and_then(|(f, g)| g.pages.get(&pgno).map(|o| (f, g, *o)))
                        {
                            Some((f, g, off)) => {
                                if !wal::read_frame_page(f, &g.header, off, &mut buf)? {
                                    return Err(LtxError::Io(std::io::Error::other(REWOUND)));
                                }
                            }
                            None => db_file
                                .read_exact_at(&mut buf, u64::from(pgno - 1) * u64::from(ps))?,
                        }
                        enc.write_page(pgno, &buf)?;
                    }
                    Ok(())
                });
        match result {
            Ok(_) => Ok(()),
            Err(super::spool::SpoolError::Ltx {
                source: LtxError::Io(e),
                ..
            }) if e.to_string() == REWOUND => Err(EngineError::WalRewound),
            Err(e) => Err(e.into()),
        }
    }

    /// The replicator's own checkpoint, in three steps so that the write barrier is
    /// held only for work proportional to what was committed in the last moments:
    ///
    /// 1. catch up without locks, then under a barrier seal the tail and move our read
    ///    transaction to the end of the WAL;
    /// 2. without any barrier, a PASSIVE checkpoint copies the bulk of the WAL into the
    ///    database file while the application keeps committing;
    /// 3. under a second barrier, seal again, end the read transaction, checkpoint the
    ///    little that is left (which arms the WAL reset) and begin it again.
    fn checkpoint(&mut self) -> Result<(), EngineError> {
        self.advance()?;
        self.cut(SPOOL_DURABILITY)?;
        self.checkpoint_attempt_frames = self.generation_frames();
        self.last_checkpoint = Instant::now();
        let path = self.db_path.clone();

        if self
            .under_barrier(|c, conns| conns.restart_read(&c.db_path))?
            .is_none()
        {
            return Ok(());
        }
        if let Some(conns) = self.conns.as_mut() {
            // Busy only if another connection is checkpointing; step 3 copes.
            let bulk = conns.passive_unlocked(&path);
            debug!(db = %path.display(), ?bulk, "bulk checkpoint");
        }
        let Some(res) = self.under_barrier(|c, conns| conns.checkpoint(&c.db_path, false))? else {
            return Ok(());
        };

        self.shared
            .stats
            .checkpoints
            .fetch_add(1, Ordering::Relaxed);
        let captured = self.generation_frames() as i64;
        self.checkpoint_attempt_frames = captured as u64;
        if res.log >= 0 && res.log != captured {
            warn!(db = %path.display(), log = res.log, captured, "checkpoint saw frames we had not captured");
        }
        debug!(db = %path.display(), ?res, "checkpoint");
        if !res.complete() {
            self.truncate_backstop(&path)?;
        }
        Ok(())
    }

    /// Runs `f` under the write barrier after sealing: everything committed up to the
    /// barrier is spooled (fsync deferred until the barrier is released). Returns
    /// `Ok(None)` if the barrier could not be taken.
    fn under_barrier<T>(
        &mut self,
        f: impl FnOnce(&Self, &mut Connections) -> Result<T, EngineError>,
    ) -> Result<Option<T>, EngineError> {
        // A writer that got ahead while we waited for the lock is caught up outside the
        // barrier, so the work under it stays bounded by `checkpoint_pages`.
        let mut attempts = 0;
        let (mut conns, acquired) = loop {
            let Some(mut conns) = self.conns.take() else {
                return Ok(None);
            };
            if let Err(e) = conns.take_barrier(&self.db_path) {
                self.conns = Some(conns);
                warn!(db = %self.db_path.display(), error = %Chain(&e), "checkpoint skipped: write lock not available");
                return Ok(None);
            }
            let acquired = Instant::now();
            attempts += 1;
            match self.advance_bounded(Some(self.cfg.checkpoint_pages)) {
                Ok(true) if attempts < 4 => {
                    let released = conns.release_barrier(&self.db_path);
                    self.conns = Some(conns);
                    released?;
                    self.advance()?;
                    self.cut(SPOOL_DURABILITY)?;
                }
                Ok(_) => break (conns, acquired),
                Err(e) => {
                    let released = conns.release_barrier(&self.db_path);
                    self.conns = Some(conns);
                    released?;
                    return Err(e);
                }
            }
        };
        let sealed = self.advance().and_then(|()| self.cut(Durability::Deferred));
        let result = match &sealed {
            Ok(_) => f(self, &mut conns),
            Err(_) => Err(EngineError::Thread("capture", "seal failed".into())),
        };
        let released = conns.release_barrier(&self.db_path);
        let held = acquired.elapsed();
        self.conns = Some(conns);
        self.shared
            .stats
            .max_barrier_us
            .fetch_max(held.as_micros() as u64, Ordering::Relaxed);
        debug!(db = %self.db_path.display(), barrier_us = held.as_micros() as u64, "barrier released");
        sealed?;
        released?;
        result.map(Some)
    }

    /// When readers keep PASSIVE from finishing and the WAL passes the hard limit,
    /// TRUNCATE (which waits for readers up to the busy timeout). It cannot run under
    /// our barrier, so commits can slip in between; the checkpoint's frame count tells
    /// whether they did, and only then is a snapshot needed.
    fn truncate_backstop(&mut self, path: &Path) -> Result<(), EngineError> {
        let wal_len = std::fs::metadata(&self.wal_path)
            .map(|m| m.len())
            .unwrap_or(0);
        let limit = self.cfg.truncate_pages * (u64::from(self.page_size) + wal::FRAME_HEADER_SIZE);
        if wal_len < limit {
            return Ok(());
        }
        warn!(db = %path.display(), wal_bytes = wal_len, "WAL past its hard limit; running a TRUNCATE checkpoint");
        self.advance()?;
        self.cut(SPOOL_DURABILITY)?;
        let Some(mut conns) = self.conns.take() else {
            return Ok(());
        };
        let res = conns.checkpoint(path, true);
        self.conns = Some(conns);
        let res = res?;
        let captured = self.generation_frames() as i64;
        if res.complete() && res.log != captured {
            self.batch = Batch::default();
            self.generation = None;
            self.cut = None;
            self.snapshot_due = Some(SnapshotReason::WalReset);
        }
        Ok(())
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

const REWOUND: &str = "WAL rewound during snapshot";

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
