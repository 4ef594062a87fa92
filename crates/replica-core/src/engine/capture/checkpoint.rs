//! The replicator's own checkpoints, and the write barrier they run under.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::{debug, warn};

use super::super::EngineError;
use super::super::sqlite::Connections;
use super::{Capturer, SPOOL_DURABILITY, SnapshotReason};
use crate::error::Chain;
use crate::spool::Durability;
use crate::wal;

/// At most this many rounds of steps 1 and 2 per checkpoint.
const BULK_ROUNDS: usize = 3;
/// Frames left for step 3 to copy under the barrier that call for another round.
const BARRIER_COPY_FRAMES: i64 = 256;
/// A barrier that finds more new frames than this releases the lock, catches up, and
/// takes it again (up to four times), so that reading and spooling under it stay short.
const BARRIER_SCAN_FRAMES: u64 = 256;

impl Capturer {
    /// The replicator's own checkpoint, in three steps so that the write barrier is
    /// held only for work proportional to what was committed in the last moments:
    ///
    /// 1. catch up without locks, then under a barrier seal the tail and move our read
    ///    transaction to the end of the WAL;
    /// 2. without any barrier, a PASSIVE checkpoint copies the bulk of the WAL into the
    ///    database file while the application keeps committing;
    /// 3. under a second barrier, seal again, end the read transaction, checkpoint the
    ///    little that is left (which arms the WAL reset) and begin it again.
    pub(super) fn checkpoint(&mut self) -> Result<(), EngineError> {
        self.advance()?;
        self.spool_batch(SPOOL_DURABILITY)?;
        self.schedule
            .checkpoint_started(self.cursor.spooled_frames());
        let path = self.db_path.clone();

        // Steps 1 and 2 again while the application appended much during the last
        // copy: each round copies what the previous one let through, so the part
        // copied under the barrier of step 3 stays small.
        let mut copied_to = 0;
        for _ in 0..BULK_ROUNDS {
            if self
                .under_barrier(|c, conns| conns.restart_read(&c.db_path))?
                .is_none()
            {
                return Ok(());
            }
            let Some(conns) = self.conns.as_mut() else {
                return Ok(());
            };
            // Busy only if another connection is checkpointing; step 3 copes.
            let bulk = conns.passive_unlocked(&path);
            debug!(db = %path.display(), ?bulk, "bulk checkpoint");
            // What the application appended during the copy is caught up here, not
            // under the barrier.
            self.advance()?;
            self.spool_batch(SPOOL_DURABILITY)?;
            // Another round only if this one at least halved what is left: a writer
            // that appends faster than the copy goes would keep every round as long as
            // the last while the WAL grows.
            let Ok(r) = bulk else { break };
            if self.wal_past_soft_limit() {
                break;
            }
            let left = self.cursor.spooled_frames() as i64 - r.checkpointed;
            let copied = r.checkpointed - std::mem::replace(&mut copied_to, r.checkpointed);
            if left <= BARRIER_COPY_FRAMES || left * 2 > copied {
                break;
            }
        }
        // SQLite syncs the WAL before it copies frames to the database file. Whatever
        // the application appended since the bulk copy is synced here, so that the sync
        // under the barrier finds little to write (it was the barrier's largest cost).
        if let Err(e) = self
            .open_wal()
            .and_then(|w| w.sync_data().map_err(|e| self.wal_io(e)))
        {
            debug!(db = %path.display(), error = %Chain(&e), "WAL presync failed; the checkpoint syncs it");
        }
        let Some(res) = self.under_barrier(|c, conns| conns.checkpoint(&c.db_path, false))? else {
            return Ok(());
        };

        self.shared
            .stats
            .checkpoints
            .fetch_add(1, Ordering::Relaxed);
        let captured = self.cursor.spooled_frames() as i64;
        self.schedule.checkpoint_base(captured as u64);
        if res.log >= 0 && res.log != captured {
            warn!(db = %path.display(), log = res.log, captured, "checkpoint saw frames we had not captured");
        }
        debug!(db = %path.display(), ?res, "checkpoint");
        if !res.complete() {
            self.truncate_backstop(&path)?;
        }
        Ok(())
    }

    /// The WAL holds half of `truncate_pages`: checkpoints stop yielding to the
    /// application (no extra rounds, no releasing the barrier to catch up), so a writer
    /// that outruns capture waits for it, and the WAL stays near this size whatever the
    /// writer's speed or the CPU left to us.
    fn wal_past_soft_limit(&self) -> bool {
        self.cursor.scanned_frames() >= self.cfg.truncate_pages / 2
    }

    /// Moves our read transaction off SQLite's read slot 0 once the WAL restarted.
    ///
    /// The read transaction that follows our complete checkpoint starts on slot 0
    /// ("everything is in the database file"): that is what lets the application's next
    /// write restart the WAL. But while a reader holds slot 0, SQLite cannot backfill,
    /// and every application commit past its autocheckpoint threshold (1,000 frames)
    /// tries anyway, sorting the whole WAL index before it gives up: a cost per commit
    /// that grows with the WAL, measured at 40% of a flat-out writer's throughput. On
    /// a slot with a frame mark, the application's checkpoint copies up to our mark
    /// once and then finds nothing to do.
    pub(super) fn repin(&mut self) -> Result<(), EngineError> {
        if self
            .under_barrier(|c, conns| conns.restart_read(&c.db_path))?
            .is_none()
        {
            // Not now (the lock was busy past our timeout): at the next restart.
            debug!(db = %self.db_path.display(), "read transaction not moved");
        }
        Ok(())
    }

    /// Runs `f` under the write barrier after sealing: everything committed up to the
    /// barrier is spooled (fsync deferred until the barrier is released). Returns
    /// `Ok(None)` if the barrier could not be taken.
    pub(super) fn under_barrier<T>(
        &mut self,
        f: impl FnOnce(&Self, &mut Connections) -> Result<T, EngineError>,
    ) -> Result<Option<T>, EngineError> {
        // A writer that got ahead while we waited for the lock is caught up outside the
        // barrier, so the work under it stays bounded by `BARRIER_SCAN_FRAMES`.
        self.advance()?;
        self.spool_batch(SPOOL_DURABILITY)?;
        let mut attempts = 0;
        let (mut conns, acquired) = loop {
            let Some(mut conns) = self.conns.take() else {
                return Ok(None);
            };
            if let Err(e) = conns.take_barrier(&self.db_path) {
                self.conns = Some(conns);
                warn!(db = %self.db_path.display(), error = %Chain(&e), "write lock not available; the checkpoint (or consistent read) waits for another turn");
                return Ok(None);
            }
            let acquired = Instant::now();
            attempts += 1;
            match self.advance_bounded(Some(BARRIER_SCAN_FRAMES)) {
                // Past the soft limit the writer waits while we catch up: it has
                // outrun us, and releasing would only let the WAL grow further.
                Ok(true) if attempts < 4 && !self.wal_past_soft_limit() => {
                    let released = conns.release_barrier(&self.db_path);
                    self.conns = Some(conns);
                    released?;
                    self.advance()?;
                    self.spool_batch(SPOOL_DURABILITY)?;
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
        let result = self
            .advance()
            .and_then(|()| self.spool_batch(Durability::Deferred))
            .and_then(|_| f(self, &mut conns));
        let released = conns.release_barrier(&self.db_path);
        let held = acquired.elapsed();
        self.conns = Some(conns);
        self.shared
            .stats
            .max_barrier_us
            .fetch_max(held.as_micros() as u64, Ordering::Relaxed);
        metrics::histogram!(
            crate::engine::status::histograms::CHECKPOINT_BARRIER_SECONDS,
            "db" => self.db_path.display().to_string()
        )
        .record(held.as_secs_f64());
        debug!(db = %self.db_path.display(), barrier_us = held.as_micros() as u64, "barrier released");
        let value = result?;
        released?;
        Ok(Some(value))
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
        self.spool_batch(SPOOL_DURABILITY)?;
        let Some(mut conns) = self.conns.take() else {
            return Ok(());
        };
        let res = conns.checkpoint(path, true);
        self.conns = Some(conns);
        let res = res?;
        let captured = self.cursor.spooled_frames() as i64;
        if res.complete() && res.log != captured {
            self.cursor.reset();
            self.schedule.snapshot_due = Some(SnapshotReason::WalReset);
        }
        Ok(())
    }
}
