//! Follow mode (`restore --follow`): a restored database kept up to date by applying
//! the replica's new LTX files as they appear, while applications read it.
//!
//! **Readers see whole transactions.** Files are applied through SQLite itself: one
//! write transaction per poll writes each page image into the `sqlite_dbpage`
//! virtual table (and truncates to the file's commit size), so the follower is an
//! ordinary WAL-mode database whose readers get a consistent snapshot from SQLite's
//! own locking: a reader either sees the state before a poll's files or after all of
//! them, never a half-applied file, and never waits for the apply (nor the apply for
//! it). The LTX files carry whole transactions of the source, so every state a reader
//! can see is one the source had.
//!
//! **Crash-resumable.** The position (the last TXID applied, with the file's identity)
//! is the spool state that `restore --seed-spool` writes, saved after each commit.
//! Applying a file means writing the page images it holds, so applying one again
//! onto the state it produced changes nothing: a follower killed between its commit
//! and the state write re-applies that poll's files, and one killed before the commit
//! finds SQLite's rollback. A restarted follower continues from its position without
//! a restore.
//!
//! **What it cannot follow** it restores again, in place and still through one
//! transaction: the replica has no file continuing the position (a new snapshot after
//! the source database was replaced or lost continuity; retention removed the files
//! after it), or it is behind the position (it was recreated).
//!
//! **Requests.** Each poll is one LIST of level 0 starting after the position's key,
//! and every tenth poll one LIST of the snapshots past it (a replaced source may
//! start its new history with a snapshot and nothing after it); only a gap costs a
//! listing of every level. At the default 1 s interval an idle follower makes 3,600 +
//! 360 LISTs an hour; a busy source adds a GET per new file (one per source sync, or
//! fewer when the source merged several into one upload).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tracing::{debug, info, warn};

use super::{
    Progress, RestoreError, RestoreOptions, RestoreOutcome, Target, WorkDir, download, io_err,
    open_ltx, parent_dir, plan, record_position, restore,
};
use crate::file_mode::FileMode;
use crate::layout::{SNAPSHOT_LEVEL, TxRange};
use crate::replica::{RemoteFile, Replica};
use crate::spool::Spool;

/// How a follower starts, and how often it polls.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// The first restore's options (output, integrity check, parallelism, mode).
    /// Its target is always the latest state.
    pub restore: RestoreOptions,
    /// How long to wait between polls of the replica (Litestream's default: 1 s).
    pub interval: Duration,
}

/// What a poll did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polled {
    /// Nothing new in the replica.
    Idle,
    /// New files applied: the position moved from `from` to `to`.
    Applied { from: u64, to: u64, files: usize },
    /// The replica could not be followed from the position; it was restored again.
    Restored { from: u64, to: u64, reason: String },
}

/// A database that follows a replica. Reads of the output go through SQLite as usual.
#[derive(Debug)]
pub struct Follower {
    replica: Replica,
    output: PathBuf,
    /// The writing connection: only this follower writes the database.
    conn: Arc<Mutex<Connection>>,
    /// The last TXID applied.
    txid: u64,
    page_size: u32,
    polls: u64,
}

/// Every this many polls, a follower also lists the snapshots past its position.
const SNAPSHOT_CHECK_EVERY: u64 = 10;

impl Follower {
    /// Restores `opts.restore.output` from `replica` if it does not exist, or resumes
    /// following it if it is a database a follower (or a seeded restore) left.
    pub async fn start(replica: &Replica, opts: &FollowOptions) -> Result<Self, RestoreError> {
        let output = opts.restore.output.clone();
        let txid = match resume_point(&output)? {
            Some(txid) => {
                info!(path = %output.display(), txid = format!("{txid:016x}"), "resuming to follow from the saved position");
                txid
            }
            None => {
                let ropts = RestoreOptions {
                    target: Target::Latest,
                    seed_spool: true,
                    if_db_not_exists: false,
                    ..opts.restore.clone()
                };
                match restore(replica, &ropts).await? {
                    RestoreOutcome::Restored { txid, .. } => txid,
                    RestoreOutcome::NoReplica => {
                        return Err(RestoreError::NoReplica {
                            url: replica.url().to_owned(),
                        });
                    }
                    other => {
                        return Err(RestoreError::Task(format!(
                            "follow needs an LTX replica; the restore gave {other:?}"
                        )));
                    }
                }
            }
        };
        let conn = open_writer(&output)?;
        let page_size = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(sql_err(&output))?;
        Ok(Self {
            replica: replica.clone(),
            output,
            conn: Arc::new(Mutex::new(conn)),
            txid,
            page_size,
            polls: 0,
        })
    }

    /// The last TXID applied.
    pub fn txid(&self) -> u64 {
        self.txid
    }

    /// Looks for new files once and applies them (or restores again).
    pub async fn poll(&mut self) -> Result<Polled, RestoreError> {
        let from = self.txid;
        let new = self.replica.list_level_after(0, from).await?;
        let mut chain = continuing(&new, from);
        // A new history (the source database was replaced) may start with a snapshot
        // and nothing after it yet: every few polls, look for a snapshot past where
        // level 0 leads.
        self.polls += 1;
        let snapshot_past = if self.polls.is_multiple_of(SNAPSHOT_CHECK_EVERY) {
            let reach = chain.last().map_or(from, |f| f.id.range.max);
            self.replica
                .list_level_after_range(SNAPSHOT_LEVEL, TxRange { min: 1, max: reach })
                .await?
                .iter()
                .any(|f| f.id.range.max > reach)
        } else {
            false
        };
        if chain.is_empty() && new.is_empty() && !snapshot_past {
            return Ok(Polled::Idle);
        }
        if chain.is_empty() || snapshot_past {
            // A gap in level 0: higher levels may bridge it (the follower was away
            // longer than L0 files are kept), or the history moved on without us.
            let all = self.replica.list_files(None).await?;
            chain = continuing(&all, from);
            if chain.is_empty() {
                let head = all.iter().map(|f| f.id.range.max).max().unwrap_or(0);
                let reason = if head < from {
                    format!(
                        "the replica ends at TXID {head:016x}, before this follower's position (it was recreated)"
                    )
                } else {
                    format!(
                        "no file continues TXID {from:016x} (a new snapshot: the source database was replaced or lost continuity; or retention removed the files after it)"
                    )
                };
                return self.restore_again(&all, reason).await;
            }
        }
        let to = chain.last().map_or(from, |f| f.id.range.max);
        let files = chain.len();
        self.apply(&chain).await?;
        debug!(path = %self.output.display(), from = format!("{from:016x}"), to = format!("{to:016x}"), files, "applied");
        Ok(Polled::Applied { from, to, files })
    }

    /// Polls every `interval` until `stop` resolves; returns the last TXID applied.
    /// A failed poll (the store is unreachable) is logged and retried at the next one.
    pub async fn run(
        mut self,
        interval: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<u64, RestoreError> {
        tokio::pin!(stop);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(interval) => {}
            }
            match self.poll().await {
                Ok(p) => {
                    if failing {
                        info!(url = %self.replica.url(), "following again");
                        failing = false;
                    }
                    if let Polled::Restored { from, to, reason } = p {
                        warn!(path = %self.output.display(), from = format!("{from:016x}"), to = format!("{to:016x}"), %reason, "restored the follower again");
                    }
                }
                Err(e) if is_retryable(&e) => {
                    if !failing {
                        warn!(url = %self.replica.url(), error = %crate::error::Chain(&e), "could not follow the replica; retrying at each poll");
                        failing = true;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        self.finish()
    }

    /// Stops following: checkpoints the follower's WAL into the database file and
    /// records the position with the file's final size and time, so `replicate` can
    /// take over this database without a snapshot (a promotion) if the replica's
    /// head is still this TXID.
    pub fn finish(self) -> Result<u64, RestoreError> {
        let conn = Arc::try_unwrap(self.conn)
            .map_err(|_| RestoreError::Task("the follower's connection is still in use".into()))?
            .into_inner()
            .map_err(|_| RestoreError::Task("the follower's connection lock is poisoned".into()))?;
        let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
        conn.close().map_err(|(_, e)| sql_err(&self.output)(e))?;
        record_position(&self.output, self.txid, self.page_size, None)?;
        info!(path = %self.output.display(), txid = format!("{:016x}", self.txid), "stopped following");
        Ok(self.txid)
    }

    /// Downloads `chain` and applies it in one transaction, then saves the position.
    async fn apply(&mut self, chain: &[RemoteFile]) -> Result<(), RestoreError> {
        let Some(last) = chain.last() else {
            return Ok(());
        };
        let mode = std::fs::metadata(&self.output)
            .map(|m| FileMode::of(&m))
            .unwrap_or(FileMode::PRIVATE);
        let parent = parent_dir(&self.output);
        let work = WorkDir::create(&parent, &self.output, mode)?;
        let progress = Progress::default();
        let mut downloads = Vec::with_capacity(chain.len());
        for (i, f) in chain.iter().enumerate() {
            let path = work.download_path(i);
            download(
                self.replica.client().clone(),
                f,
                &path,
                mode.file(),
                &progress,
            )
            .await?;
            downloads.push((f.clone(), path));
        }
        let conn = Arc::clone(&self.conn);
        let out = self.output.clone();
        let txid = last.id.range.max;
        let page_size = self.page_size;
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().map_err(|_| {
                RestoreError::Task("the follower's connection lock is poisoned".into())
            })?;
            apply_files(&conn, &out, page_size, &downloads)?;
            drop(conn);
            record_position(&out, txid, page_size, None)
        })
        .await
        .map_err(|e| RestoreError::Task(format!("the apply task failed: {e}")))??;
        drop(work);
        self.txid = txid;
        Ok(())
    }

    async fn restore_again(
        &mut self,
        all: &[RemoteFile],
        reason: String,
    ) -> Result<Polled, RestoreError> {
        let from = self.txid;
        let chain = plan(all, Target::Latest).map_err(|source| RestoreError::Plan {
            url: self.replica.url().to_owned(),
            source,
        })?;
        self.apply(&chain).await?;
        Ok(Polled::Restored {
            from,
            to: self.txid,
            reason,
        })
    }
}

/// Runs a follower: restores (or resumes), then follows until `stop`; returns the last
/// TXID applied.
pub async fn follow(
    replica: &Replica,
    opts: &FollowOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<u64, RestoreError> {
    let f = Follower::start(replica, opts).await?;
    info!(path = %opts.restore.output.display(), url = %replica.url(), txid = format!("{:016x}", f.txid()), interval_ms = opts.interval.as_millis() as u64, "following");
    f.run(opts.interval, stop).await
}

/// The files that continue a database at TXID `from`: repeatedly the one reaching
/// furthest among levels 0-8 that covers the next TXID (a compacted file starting
/// before it also does: its page images are the state at its end). Empty if none does.
fn continuing(files: &[RemoteFile], from: u64) -> Vec<RemoteFile> {
    let mut chain = Vec::new();
    let mut at = from;
    loop {
        let next = files
            .iter()
            .filter(|f| f.id.level != SNAPSHOT_LEVEL)
            .filter(|f| f.id.range.min <= at + 1 && f.id.range.max > at)
            .max_by_key(|f| (f.id.range.max, std::cmp::Reverse(f.id.level)));
        match next {
            Some(f) => {
                at = f.id.range.max;
                chain.push(f.clone());
            }
            None => return chain,
        }
    }
}

/// The position a previous follower (or a seeded restore) left for `output`, if the
/// file is still the one it describes; an existing output without one is refused, as
/// a restore refuses it.
fn resume_point(output: &Path) -> Result<Option<u64>, RestoreError> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(output) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(output)(e)),
    };
    let state = Spool::open_existing(output).and_then(|s| s.load_state());
    match state {
        Some(s) if s.position.is_none() && (s.db_dev, s.db_ino) == (meta.dev(), meta.ino()) => {
            Ok(Some(s.txid))
        }
        _ => Err(RestoreError::NotAFollower {
            path: output.to_path_buf(),
        }),
    }
}

/// The follower's connection: read-write, WAL mode, and able to write pages.
fn open_writer(path: &Path) -> Result<Connection, RestoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql_err(path))?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(sql_err(path))?;
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .map_err(sql_err(path))?;
    if conn
        .query_row(
            "SELECT count(*) FROM sqlite_dbpage WHERE pgno = 1",
            [],
            |_| Ok(()),
        )
        .is_err()
    {
        return Err(RestoreError::FollowUnsupported);
    }
    Ok(conn)
}

/// Writes every page of `files` (in order) and the final size, in one transaction.
fn apply_files(
    conn: &Connection,
    out: &Path,
    page_size: u32,
    files: &[(RemoteFile, PathBuf)],
) -> Result<(), RestoreError> {
    let sql = sql_err(out);
    conn.execute_batch("BEGIN IMMEDIATE").map_err(&sql)?;
    let applied = (|| {
        let mut put = conn
            .prepare_cached("INSERT INTO sqlite_dbpage(pgno, data) VALUES (?1, ?2)")
            .map_err(&sql)?;
        let mut commit = 0u32;
        for (f, path) in files {
            let corrupt = |source| RestoreError::Corrupt {
                key: f.key.to_string(),
                source,
            };
            let file = std::fs::File::open(path).map_err(io_err(path))?;
            let mut dec = open_ltx(f, std::io::BufReader::new(file))?;
            let h = *dec.header();
            if h.page_size != page_size {
                return Err(RestoreError::Mismatch {
                    key: f.key.to_string(),
                    detail: format!(
                        "page size {} where the follower's database has {page_size} (the source was replaced by another database: restore it anew)",
                        h.page_size
                    ),
                });
            }
            let mut page = vec![0u8; h.page_size as usize];
            while let Some(pgno) = dec.next_page(&mut page).map_err(corrupt)? {
                put.execute((pgno, &page[..])).map_err(&sql)?;
            }
            dec.finish().map_err(corrupt)?;
            commit = h.commit;
        }
        let pages: u32 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(&sql)?;
        if commit > 0 && pages > commit {
            // Last, as SQLite forgets a truncation when a page is written after it.
            put.execute((commit + 1, None::<Vec<u8>>)).map_err(&sql)?;
        }
        Ok(())
    })();
    match applied {
        Ok(()) => conn.execute_batch("COMMIT").map_err(&sql),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn sql_err(path: &Path) -> impl Fn(rusqlite::Error) -> RestoreError + '_ {
    move |source| RestoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

/// A store that falters (an outage, a throttle) or a file that vanished between a
/// listing and its read is retried at the next poll; anything else stops following.
fn is_retryable(e: &RestoreError) -> bool {
    match e {
        RestoreError::Store(s) => s.is_transient() || s.is_not_found(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;
    use crate::layout::FileId;

    fn file(level: u8, min: u64, max: u64) -> RemoteFile {
        RemoteFile {
            id: FileId {
                level,
                range: TxRange { min, max },
            },
            key: Key::new(format!("{level}/{min}-{max}")).expect("key"),
            size: 1,
            ltx_time: None,
            last_modified: None,
        }
    }

    fn ranges(chain: &[RemoteFile]) -> Vec<(u8, u64, u64)> {
        chain
            .iter()
            .map(|f| (f.id.level, f.id.range.min, f.id.range.max))
            .collect()
    }

    #[test]
    fn a_chain_continues_the_position_through_any_level_but_snapshots() {
        let files = [
            file(9, 1, 20),
            file(1, 1, 12),
            file(0, 11, 11),
            file(0, 12, 12),
            file(0, 13, 14),
            file(0, 15, 15),
            file(0, 17, 17),
        ];
        // From 10: the L1 file reaches furthest (its images are the state at 12).
        assert_eq!(
            ranges(&continuing(&files, 10)),
            [(1, 1, 12), (0, 13, 14), (0, 15, 15)]
        );
        assert_eq!(ranges(&continuing(&files, 14)), [(0, 15, 15)]);
        // A gap (16 missing) stops the chain; the snapshot never continues one.
        assert!(continuing(&files, 15).is_empty());
        assert!(continuing(&files, 20).is_empty());
    }
}
