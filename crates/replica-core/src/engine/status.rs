//! What an operator asks of a running replication: how far behind the store is, what
//! is waiting in the spool, when the last upload and snapshot happened, and what it
//! cost. [`Replicator::status`](super::Replicator::status) reads it without a request
//! to the store and without a lock that capture or the shipper holds for long.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{Manifest, Shared};
use crate::error::StoreError;
use crate::lease::LeaseState;
use crate::replica::Replica;
use crate::requests::RequestTotals;
use crate::spool::Spool;

/// Histograms the engine records through the `metrics` facade, labelled `db` (a no-op
/// unless the program installs a recorder). Everything else an operator sees is read
/// from [`Status`] when asked.
pub mod histograms {
    /// Seconds from the start of an upload (the shipper's, one object) to its success.
    pub const UPLOAD_SECONDS: &str = "replica_upload_duration_seconds";
    /// Seconds the checkpoint barrier held SQLite's write lock.
    pub const CHECKPOINT_BARRIER_SECONDS: &str = "replica_checkpoint_barrier_seconds";
}

/// Replication progress, kept by capture and the shipper under one short lock
/// (`Shared::progress`), taken once per spooled file and once per upload.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Highest TXID spooled. Written by capture.
    pub local_txid: u64,
    /// Capture time of the oldest spooled commit the store does not hold yet, in ms
    /// since the epoch; `None` when the store holds everything spooled. Set by
    /// capture when it spools into an empty backlog; moved on or cleared by the
    /// shipper after each upload.
    pub unshipped_since_ms: Option<i64>,
    /// When the last upload succeeded (ms since the epoch). Written by the shipper.
    pub last_upload_ms: Option<i64>,
    /// Whether the last upload attempt failed. Written by the shipper.
    pub failing: bool,
    /// Capture is paused because the disk is full. Written by capture.
    pub disk_full: bool,
}

impl Progress {
    /// Capture spooled `txid`, captured at `ms`.
    pub fn spooled(&mut self, txid: u64, ms: i64) {
        self.local_txid = self.local_txid.max(txid);
        self.unshipped_since_ms.get_or_insert(ms);
    }

    /// The store now holds everything up to `remote`; `next_ms` is the capture time
    /// of the next spooled file, if the shipper knows it.
    pub fn uploaded(&mut self, remote: u64, next_ms: Option<i64>, now_ms: i64) {
        self.last_upload_ms = Some(now_ms);
        self.failing = false;
        self.unshipped_since_ms = if remote >= self.local_txid {
            None
        } else {
            // Spooled after the shipper listed the spool: no older than this pass.
            Some(next_ms.unwrap_or(now_ms))
        };
    }
}

/// Reads a replicator's [`Status`]; cheap to clone, kept by whoever reports it.
#[derive(Debug, Clone)]
pub struct Monitor {
    pub(super) db: PathBuf,
    pub(super) spool: Spool,
    pub(super) shared: Arc<Shared>,
    pub(super) manifest: Arc<Mutex<Manifest>>,
    pub(super) lease_state: Arc<LeaseState>,
}

impl Monitor {
    /// The replicated database.
    pub fn db(&self) -> &Path {
        &self.db
    }

    /// Where replication stands now. Costs a listing of the spool directory and a
    /// `stat` of the WAL; no request to the store and no lock held for long.
    pub fn status(&self) -> Status {
        let now = std::time::SystemTime::now();
        let (remote_txid, snapshot, window) = match self.manifest.lock() {
            Ok(m) => (m.replica_max(), m.newest_snapshot(), m.time_window()),
            Err(_) => (0, None, None),
        };
        let (local_txid, since, last_upload, failing, disk_full) = match self.shared.progress.lock()
        {
            Ok(p) => (
                p.local_txid,
                p.unshipped_since_ms,
                p.last_upload_ms,
                p.failing,
                p.disk_full,
            ),
            Err(_) => (0, None, None, true, false),
        };
        let stopped = self.shared.failed.load(Ordering::Acquire) || self.lease_state.is_lost();
        let pending = self.spool.pending().unwrap_or_default();
        let spool_bytes = Spool::bytes_of(&pending);
        let wal = super::capture::wal_path_of(&self.db);
        let lease = if self.lease_state.is_lost() {
            "lost"
        } else if self.lease_state.permit("").is_ok() {
            "held"
        } else {
            "lapsed"
        };
        let snapshot_time = snapshot.and_then(|(_, t)| t);
        Status {
            db: self.db.clone(),
            url: self.lease_state.url().to_owned(),
            state: if stopped {
                State::Stopped
            } else if failing {
                State::Failing
            } else {
                State::Replicating
            },
            local_txid: local_txid.max(remote_txid),
            remote_txid,
            lag_seconds: since.map_or(0.0, |ms| age_seconds(from_epoch_ms(ms), now)),
            last_upload: last_upload.map(from_epoch_ms),
            last_snapshot: snapshot_time,
            snapshot_age_seconds: snapshot_time.map(|t| age_seconds(t, now)),
            restorable_from: window.map(|(from, _)| from),
            restorable_to: window.map(|(_, to)| to),
            spool_files: pending.len() as u64,
            spool_bytes,
            wal_bytes: std::fs::metadata(&wal).map_or(0, |m| m.len()),
            disk_full,
            lease,
            counters: Counters::of(&self.shared.stats),
        }
    }
}

/// One database's replication, at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub db: PathBuf,
    /// The replica URL, as safe to show as every URL we log.
    pub url: String,
    /// `replicating`, `failing` (uploads fail and are retried; the spool keeps
    /// everything) or `stopped` (capture or the shipper ended with an error, or the
    /// lease was lost).
    pub state: State,
    /// Highest TXID captured from the WAL into the spool (hex in JSON, as TXIDs are
    /// written everywhere).
    #[serde(serialize_with = "hex")]
    pub local_txid: u64,
    /// Highest TXID the store holds, as this process knows it.
    #[serde(serialize_with = "hex")]
    pub remote_txid: u64,
    /// Age of the oldest captured commit that is not in the store yet; zero when the
    /// store holds everything captured. Resolution: one pass of the shipper.
    pub lag_seconds: f64,
    /// When the last upload succeeded, if any did. Times print as RFC 3339.
    #[serde(serialize_with = "rfc3339")]
    pub last_upload: Option<SystemTime>,
    /// When the newest snapshot in the store was taken, and its age.
    #[serde(serialize_with = "rfc3339")]
    pub last_snapshot: Option<SystemTime>,
    pub snapshot_age_seconds: Option<f64>,
    /// The earliest and latest times a restore can reach, from what the store holds.
    #[serde(serialize_with = "rfc3339")]
    pub restorable_from: Option<SystemTime>,
    #[serde(serialize_with = "rfc3339")]
    pub restorable_to: Option<SystemTime>,
    /// Files and bytes waiting in the spool.
    pub spool_files: u64,
    pub spool_bytes: u64,
    /// Size of the database's WAL file now.
    pub wal_bytes: u64,
    /// Capture is paused because the disk is full (it resumes on its own).
    pub disk_full: bool,
    /// The replica's lease: `held` (writes may go out), `lapsed` (not renewed in
    /// time; writes wait for a renewal), `lost` (another replicator took it) or
    /// `none` (no process holds it: offline status).
    pub lease: &'static str,
    pub counters: Counters,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Replicating,
    Failing,
    Stopped,
    /// Read from the spool and the store: no replicator was asked.
    NotRunning,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Replicating => "replicating",
            State::Failing => "failing",
            State::Stopped => "stopped",
            State::NotRunning => "not_running",
        }
    }
}

/// Totals since the replicator started.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    pub ltx_files: u64,
    pub snapshots: u64,
    pub checkpoints: u64,
    pub uploads: u64,
    pub upload_bytes: u64,
    pub upload_errors: u64,
    pub compactions: u64,
    pub deleted_files: u64,
    pub disk_full_pauses: u64,
    /// Failures by kind (see `EngineError::kind`), every kind listed.
    pub errors: Vec<(&'static str, u64)>,
    pub requests: RequestTotals,
}

impl Counters {
    pub(crate) fn of(s: &super::Stats) -> Self {
        let l = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        Counters {
            ltx_files: l(&s.ltx_files),
            snapshots: l(&s.snapshots),
            checkpoints: l(&s.checkpoints),
            uploads: l(&s.uploads),
            upload_bytes: l(&s.upload_bytes),
            upload_errors: l(&s.upload_errors),
            compactions: l(&s.compactions),
            deleted_files: l(&s.deleted_files),
            disk_full_pauses: l(&s.disk_full_pauses),
            errors: s.errors.totals(),
            requests: s.requests.totals(),
        }
    }
}

/// Now, in milliseconds since the epoch (the LTX header's clock).
pub(crate) fn now_ms() -> i64 {
    epoch_ms(SystemTime::now())
}

pub(crate) fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(crate) fn from_epoch_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// The status of a database no process replicates now, from its spool (what was
/// captured and not uploaded) and one listing of its replica.
pub async fn offline(db: &Path, replica: &Replica) -> Result<Status, StoreError> {
    let now = SystemTime::now();
    let manifest = Manifest::new(replica.list_files(None).await?);
    let remote_txid = manifest.replica_max();
    let snapshot = manifest.newest_snapshot().and_then(|(_, t)| t);
    let window = manifest.time_window();
    let (local_txid, pending) = match Spool::open_existing(db) {
        Some(spool) => (
            spool.load_state().map_or(0, |s| s.txid),
            spool.pending().unwrap_or_default(),
        ),
        None => (0, Vec::new()),
    };
    let times: Vec<(u64, Option<SystemTime>)> = pending
        .iter()
        .filter_map(|p| std::fs::metadata(&p.path).ok())
        .map(|m| (m.len(), m.modified().ok()))
        .collect();
    let oldest = times.iter().filter_map(|(_, t)| *t).min();
    Ok(Status {
        db: db.to_path_buf(),
        url: replica.url().to_owned(),
        state: State::NotRunning,
        local_txid: local_txid.max(remote_txid),
        remote_txid,
        lag_seconds: oldest.map_or(0.0, |t| age_seconds(t, now)),
        last_upload: None,
        last_snapshot: snapshot,
        snapshot_age_seconds: snapshot.map(|t| age_seconds(t, now)),
        restorable_from: window.map(|(from, _)| from),
        restorable_to: window.map(|(_, to)| to),
        spool_files: pending.len() as u64,
        spool_bytes: times.iter().map(|(n, _)| n).sum(),
        wal_bytes: std::fs::metadata(super::capture::wal_path_of(db)).map_or(0, |m| m.len()),
        disk_full: false,
        lease: "none",
        counters: Counters::default(),
    })
}

/// A TXID as 16 hex digits, as TXIDs are written everywhere.
pub(crate) fn hex<S: serde::Serializer>(txid: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{txid:016x}"))
}

pub(crate) fn hex_opt<S: serde::Serializer>(txid: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match txid {
        Some(t) => hex(t, s),
        None => s.serialize_none(),
    }
}

/// A time as RFC 3339 in UTC, as times are written everywhere.
pub(crate) fn rfc3339<S: serde::Serializer>(
    t: &Option<SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&crate::meta::format_timestamp(*t)),
        None => s.serialize_none(),
    }
}

/// Seconds since the epoch, for metrics.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub(crate) fn age_seconds(since: SystemTime, now: SystemTime) -> f64 {
    now.duration_since(since).map_or(0.0, |d| d.as_secs_f64())
}
