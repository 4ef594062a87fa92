//! Capture's three clocks: when to ship, when to checkpoint, when to snapshot.
//! Capture alone decides when the shipper sends: it sets `Shared::ship_due`.

use std::time::{Duration, Instant, SystemTime};

use super::super::EngineConfig;
use super::SnapshotReason;

/// The spacing between checkpoints bounds their cost to a fast writer, but a writer
/// fast enough (an in-process one commits 150,000 frames a second) fills the WAL faster
/// than one spaced checkpoint empties it. Past this fraction (1/N) of `truncate_pages`
/// checkpoints run back to back instead, so the WAL stays well below the hard limit.
const BACKLOG_SHARE: u64 = 4;

#[derive(Debug)]
pub(super) struct Schedule {
    /// When the sync-interval timer last shipped: only timer signals move it, so files
    /// spooled early (by a checkpoint or a large batch) never postpone shipping.
    last_ship: Instant,
    /// Files spooled since `last_ship` that the shipper has not been told to send.
    unshipped: bool,
    last_checkpoint: Instant,
    /// Spooled frames of the generation when the last checkpoint ran: the next one is
    /// due only once the WAL has grown past it again.
    checkpoint_frames: u64,
    last_snapshot: Instant,
    /// A snapshot that must come next (and is retried until it is taken).
    pub snapshot_due: Option<SnapshotReason>,
    /// TXID of the newest snapshot, spooled or in the replica.
    pub last_snapshot_txid: u64,
    /// The WAL restarted under our read transaction, which therefore sits on SQLite's
    /// read slot 0 (the "database file only" slot): it must move to a slot with a
    /// frame mark. See `Capturer::repin`.
    pub repin_due: bool,
}

impl Schedule {
    /// The snapshot clock continues from the replica's newest snapshot, so restarts
    /// neither postpone snapshots for ever nor add one per start.
    pub fn new(cfg: &EngineConfig, remote_snapshot: Option<(u64, Option<SystemTime>)>) -> Self {
        let now = Instant::now();
        let mut last_snapshot = now;
        let mut last_snapshot_txid = 0;
        if let Some((txid, created)) = remote_snapshot {
            last_snapshot_txid = txid;
            let age = created
                .and_then(|c| SystemTime::now().duration_since(c).ok())
                .unwrap_or_default()
                .min(cfg.snapshot_interval);
            last_snapshot = now.checked_sub(age).unwrap_or(now);
        }
        Self {
            last_ship: now.checked_sub(cfg.sync_interval).unwrap_or(now),
            unshipped: false,
            last_checkpoint: now,
            checkpoint_frames: 0,
            last_snapshot,
            snapshot_due: None,
            last_snapshot_txid,
            repin_due: false,
        }
    }

    /// Whether to ship now (`batch`: scanned frames wait to be spooled): at most once
    /// per interval, at once for the first change after a quiet interval, and at once
    /// when `force`d (a stop).
    pub fn ship_due(&self, now: Instant, cfg: &EngineConfig, batch: bool, force: bool) -> bool {
        (batch || self.unshipped)
            && (force || now.duration_since(self.last_ship) >= cfg.sync_interval)
    }

    pub fn spooled(&mut self) {
        self.unshipped = true;
    }

    pub fn shipped(&mut self, now: Instant) {
        self.last_ship = now;
        self.unshipped = false;
    }

    /// How long capture may sleep before the next ship signal is due, if anything
    /// waits to be shipped.
    pub fn ship_wait(&self, cfg: &EngineConfig, batch: bool) -> Option<Duration> {
        (batch || self.unshipped)
            .then(|| (self.last_ship + cfg.sync_interval).saturating_duration_since(Instant::now()))
    }

    /// A checkpoint is due once the WAL grew by `checkpoint_pages` (and
    /// `checkpoint_spacing` passed since the last one, unless the WAL already holds
    /// more than [`BACKLOG_SHARE`] of the hard limit), or grew at all and
    /// `checkpoint_interval` passed.
    pub fn checkpoint_due(&self, now: Instant, cfg: &EngineConfig, wal_frames: u64) -> bool {
        let grown = wal_frames.saturating_sub(self.checkpoint_frames);
        let since = now.duration_since(self.last_checkpoint);
        let backlog = wal_frames >= cfg.truncate_pages / BACKLOG_SHARE;
        (grown >= cfg.checkpoint_pages && (since >= cfg.checkpoint_spacing || backlog))
            || (grown > 0 && since >= cfg.checkpoint_interval)
    }

    pub fn checkpoint_started(&mut self, wal_frames: u64) {
        self.checkpoint_frames = wal_frames;
        self.last_checkpoint = Instant::now();
    }

    /// The frames a (new) WAL generation counts from.
    pub fn checkpoint_base(&mut self, wal_frames: u64) {
        self.checkpoint_frames = wal_frames;
    }

    pub fn snapshot_interval_due(&self, now: Instant, cfg: &EngineConfig) -> bool {
        now.duration_since(self.last_snapshot) >= cfg.snapshot_interval
    }

    pub fn snapshot_taken(&mut self, txid: Option<u64>) {
        self.last_snapshot = Instant::now();
        if let Some(txid) = txid {
            self.last_snapshot_txid = txid;
        }
    }

    /// The interval snapshot is due but must wait (the last one is not uploaded yet):
    /// look again in a second.
    pub fn snapshot_retry_soon(&mut self, cfg: &EngineConfig) {
        self.last_snapshot = Instant::now()
            .checked_sub(cfg.snapshot_interval)
            .map(|t| t + Duration::from_secs(1))
            .unwrap_or_else(Instant::now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacing_holds_back_checkpoints_until_the_wal_is_backlogged() {
        let cfg = EngineConfig::default();
        let mut s = Schedule::new(&cfg, None);
        s.checkpoint_started(0);
        let now = Instant::now();
        // Grown past `checkpoint_pages`, but within the spacing: not yet.
        assert!(!s.checkpoint_due(now, &cfg, cfg.checkpoint_pages));
        // Once the spacing has passed: due.
        assert!(s.checkpoint_due(now + cfg.checkpoint_spacing, &cfg, cfg.checkpoint_pages));
        // A WAL past the backlog share is due at once, spacing or not.
        let backlog = cfg.truncate_pages / BACKLOG_SHARE;
        assert!(!s.checkpoint_due(now, &cfg, backlog - 1));
        assert!(s.checkpoint_due(now, &cfg, backlog));
        // Small growth waits for the interval.
        assert!(!s.checkpoint_due(now + cfg.checkpoint_spacing, &cfg, 1));
        assert!(s.checkpoint_due(now + cfg.checkpoint_interval, &cfg, 1));
    }
}
