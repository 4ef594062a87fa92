//! Snapshots: a full image of the database as of the cursor, spooled as level 9.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::info;

use super::super::EngineError;
use super::{Capturer, SPOOL_DURABILITY, SnapshotReason};
use crate::engine::status::now_ms;
use crate::layout::SNAPSHOT_LEVEL;
use crate::ltx::{self, FLAG_NO_CHECKSUM, Header, LtxError};
use crate::spool::{Durability, SpoolError};
use crate::wal;

/// A WAL frame the snapshot was reading was overwritten: only possible while we hold
/// READ(0), after a complete backfill, so the database file alone is the image.
#[derive(Debug, thiserror::Error)]
#[error("the WAL was rewound while a snapshot read it")]
struct Rewound;

fn is_rewound(e: &EngineError) -> bool {
    matches!(e, EngineError::Spool(SpoolError::Ltx { source: LtxError::Io(io), .. })
        if io.get_ref().is_some_and(|inner| inner.is::<Rewound>()))
}

impl Capturer {
    /// Writes a full image of the database as of the cursor to the spool.
    /// Runs under our read transaction only: writers are never blocked, and pages read
    /// from the database file cannot change, because a checkpoint copies only frames
    /// at or below our read mark and those pages are taken from the WAL instead.
    pub(super) fn snapshot(&mut self, reason: SnapshotReason) -> Result<(), EngineError> {
        let started = Instant::now();
        if reason == SnapshotReason::Interval {
            if self.cursor.batch.is_empty() && self.txid == self.schedule.last_snapshot_txid {
                // Nothing changed since the last snapshot.
                self.schedule.snapshot_taken(None);
                return Ok(());
            }
            if self.spool.has_pending(SNAPSHOT_LEVEL) {
                // The last one is not uploaded yet (an outage): another DB-sized file
                // would only grow the spool.
                self.schedule.snapshot_retry_soon(&self.cfg);
                return Ok(());
            }
            self.advance()?;
            self.spool_batch(SPOOL_DURABILITY)?;
        } else {
            // A fresh start of history: take the whole current WAL as the base.
            self.cursor.reset();
            self.advance()?;
            self.cursor.mark_spooled();
            self.txid += 1;
        }
        let txid = self.txid.max(1);
        self.txid = txid;

        // A new history that follows an old one also gets its image as the level-0
        // file of its TXID, as Litestream writes it: readers that follow level 0 (a
        // `restore --follow`, Litestream's VFS) then apply it and go on, where a
        // snapshot alone would leave them a gap at this TXID.
        let levels: &[u8] = if reason != SnapshotReason::Interval && txid > 1 {
            &[0, SNAPSHOT_LEVEL]
        } else {
            &[SNAPSHOT_LEVEL]
        };
        for &level in levels {
            if let Err(e) = self.write_snapshot(txid, level) {
                if !is_rewound(&e) {
                    return Err(e);
                }
                self.cursor.reset();
                self.write_snapshot(txid, level)?;
            }
        }
        self.save_state(SPOOL_DURABILITY)?;
        self.schedule.snapshot_taken(Some(txid));
        self.shared.stats.snapshots.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut p) = self.shared.progress.lock() {
            p.spooled(txid, now_ms());
        }
        info!(db = %self.db_path.display(), %reason, txid = format!("{txid:016x}"), elapsed_ms = started.elapsed().as_millis() as u64, "snapshot spooled");
        // A snapshot ships at once, and with it what is spooled before it (the
        // level-0 image of a new history sorts first).
        self.shared.ship_due.store(true, Ordering::Release);
        self.shared.notify_shipper();
        Ok(())
    }

    /// Writes the image as a snapshot (level 9, TXIDs 1 to `txid`) or as the level-0
    /// file of `txid` alone.
    fn write_snapshot(&self, txid: u64, level: u8) -> Result<(), EngineError> {
        let ps = self.page_size;
        let db_pages = match self.cursor.generation.as_ref().and_then(|g| g.db_pages) {
            Some(n) => n,
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
        if db_pages == 0 {
            return Err(EngineError::EmptyDatabase {
                path: self.db_path.clone(),
            });
        }
        let header = Header {
            flags: FLAG_NO_CHECKSUM,
            page_size: ps,
            commit: db_pages,
            min_txid: if level == SNAPSHOT_LEVEL { 1 } else { txid },
            max_txid: txid,
            timestamp_ms: now_ms(),
            ..Header::default()
        };
        let wal = match &self.cursor.generation {
            Some(g) if !g.pages.is_empty() => Some((self.open_wal()?, g)),
            _ => None,
        };
        let lock = ltx::lock_pgno(ps);
        let mut buf = vec![0u8; ps as usize];
        let db_file = &self.db_file;
        // A snapshot is the one large spool write: it is fsynced here, outside any
        // lock, so that a later fsync by SQLite under our barrier (a checkpoint) does
        // not have to push it out while the application waits.
        self.spool
            .write_ltx(level, header, Durability::Now, |enc| {
                for pgno in 1..=db_pages {
                    if pgno == lock {
                        continue;
                    }
                    match wal
                        .as_ref()
                        .and_then(|(f, g)| g.pages.get(&pgno).map(|o| (f, g, *o)))
                    {
                        Some((f, g, off)) => {
                            if !wal::read_frame_page(f, &g.header, off, &mut buf)? {
                                return Err(LtxError::Io(std::io::Error::other(Rewound)));
                            }
                        }
                        None => {
                            db_file.read_exact_at(&mut buf, u64::from(pgno - 1) * u64::from(ps))?
                        }
                    }
                    enc.write_page(pgno, &buf)?;
                }
                Ok(())
            })
            .map(|_| ())
            .map_err(EngineError::from)
    }
}
