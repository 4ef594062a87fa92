//! Is the path still the file we replicate? A database deleted and recreated,
//! restored over or renamed into place has another history: capture follows it with
//! new connections and a snapshot.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::super::EngineError;
use super::super::sqlite::Connections;
use super::{Capturer, SnapshotReason, check_sqlite_file};
use crate::error::Chain;
use crate::file_mode::FileMode;

/// What capture last saw of the database and WAL files.
#[derive(Debug)]
pub(super) struct Identity {
    /// `(dev, ino)` of the replicated file.
    pub id: (u64, u64),
    /// Set when the path names another file than the replicated one; cleared by
    /// [`Capturer::reopen`].
    pub replaced: bool,
    missing_logged: bool,
    last_wal_stat: Option<(u64, u64, i64, i64)>,
    last_full_check: Instant,
    /// The WAL's `stat` differed at the last look (drives the polling fallback).
    pub wal_stat_moved: bool,
}

impl Identity {
    pub fn new(id: (u64, u64)) -> Self {
        Self {
            id,
            replaced: false,
            missing_logged: false,
            last_wal_stat: None,
            last_full_check: Instant::now(),
            wal_stat_moved: false,
        }
    }

    /// A cheap check (one stat) for "the WAL may have changed"; a full check, which
    /// also looks at the database file, runs at least once a second anyway.
    pub fn wal_changed(&mut self, wal: &Path, db: &Path) -> bool {
        let st = std::fs::metadata(wal)
            .ok()
            .map(|m| (m.ino(), m.len(), m.mtime(), m.mtime_nsec()));
        let now = Instant::now();
        self.wal_stat_moved = st != self.last_wal_stat;
        if self.wal_stat_moved || now.duration_since(self.last_full_check) >= Duration::from_secs(1)
        {
            self.last_wal_stat = st;
            self.last_full_check = now;
            self.check(db);
            true
        } else {
            false
        }
    }

    /// Notes whether the path still names the file we replicate (one `stat`).
    pub fn check(&mut self, db: &Path) {
        let now = std::fs::metadata(db).ok().map(|m| (m.dev(), m.ino()));
        if now != Some(self.id) {
            self.replaced = true;
        }
    }
}

impl Capturer {
    /// Follows a database replaced underneath us: new connections on the new file and
    /// a snapshot, because its history is not ours. Waits while the path is absent.
    pub(super) fn reopen(&mut self) -> Result<(), EngineError> {
        let meta = match std::fs::metadata(&self.db_path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !self.identity.missing_logged {
                    warn!(db = %self.db_path.display(), "database file was removed; replication resumes when it is back");
                    self.identity.missing_logged = true;
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
        self.identity = Identity::new((meta.dev(), meta.ino()));
        self.follow_mode(FileMode::of(&meta))?;
        self.cursor.reset();
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
}
