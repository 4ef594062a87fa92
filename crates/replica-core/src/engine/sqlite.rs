//! The replicator's two SQLite connections and the lock discipline around them.
//!
//! `reader` holds a read transaction at all times: while it does, no other connection
//! can reset the WAL past frames we have not captured. It is ended only inside our own
//! checkpoint, while `barrier` holds the write lock, so nothing can commit in between.
//! Neither connection ever writes to the user's database.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tracing::info;

use super::EngineError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointResult {
    pub busy: bool,
    /// Frames in the WAL when the checkpoint ran.
    pub log: i64,
    /// Frames copied back into the database file.
    pub checkpointed: i64,
}

impl CheckpointResult {
    /// Every frame is in the database file: the next writer rewinds the WAL.
    pub fn complete(&self) -> bool {
        !self.busy && self.log == self.checkpointed
    }
}

/// Gives up SQLite's per-connection lookaside allocator (about 120 KiB preallocated
/// per connection by default): it speeds up statement preparation, which these
/// connections do a handful of times, and at a thousand databases (two thousand
/// connections) it was most of the process's memory. Failure only costs memory.
fn disable_lookaside(conn: &Connection) {
    // SAFETY: the handle is a live connection owned by `conn`, with no statement
    // prepared yet, so no lookaside memory is in use; the variadic arguments are the
    // (void*, int, int) that SQLITE_DBCONFIG_LOOKASIDE takes.
    #[allow(unsafe_code)]
    unsafe {
        rusqlite::ffi::sqlite3_db_config(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::os::raw::c_void>(),
            0 as std::os::raw::c_int,
            0 as std::os::raw::c_int,
        );
    }
}

#[derive(Debug)]
pub struct Connections {
    reader: Connection,
    barrier: Connection,
    in_read_tx: bool,
}

fn sql_err(path: &Path) -> impl Fn(rusqlite::Error) -> EngineError + '_ {
    move |source| EngineError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

/// Turns off SQLite's bulk preallocation of page-cache memory (20 pages per
/// connection at the first page read, sized by the default 2 MiB cache because the
/// read happens before `PRAGMA cache_size` can apply, and kept until the connection
/// closes): at a thousand databases it was 200 MiB of a 330 MiB process (heaptrack).
/// It is a process-wide setting that SQLite accepts only before it is initialized;
/// when an embedding application already opened a connection, the call is refused
/// and only memory is lost.
pub(crate) fn no_bulk_page_cache() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: SQLITE_CONFIG_PAGECACHE takes (void*, int, int); a NULL buffer with
        // zero lines asks for no preallocation. SQLite checks its own state and
        // returns SQLITE_MISUSE once initialized.
        #[allow(unsafe_code)]
        let rc = unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_PAGECACHE,
                std::ptr::null_mut::<std::os::raw::c_void>(),
                0 as std::os::raw::c_int,
                0 as std::os::raw::c_int,
            )
        };
        if rc != rusqlite::ffi::SQLITE_OK {
            tracing::debug!(
                rc,
                "SQLite already initialized; page caches keep their bulk preallocation"
            );
        }
    });
}

fn open(path: &Path, busy: Duration) -> Result<Connection, EngineError> {
    no_bulk_page_cache();
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql_err(path))?;
    disable_lookaside(&conn);
    conn.busy_timeout(busy).map_err(sql_err(path))?;
    // Only the replicator decides when the WAL is checkpointed.
    conn.query_row("PRAGMA wal_autocheckpoint=0", [], |_| Ok(()))
        .map_err(sql_err(path))?;
    // Neither connection reads tables (pages come from the WAL and the file), so the
    // default 2 MiB page cache would only cost memory: a thousand databases in one
    // process hold two thousand connections. 16 KiB holds the few pages a schema read
    // and a checkpoint touch. (The bulk preallocation that made these caches 200 MiB
    // at a thousand databases happens before this pragma; see `no_bulk_page_cache`.)
    conn.execute_batch("PRAGMA cache_size=-16")
        .map_err(sql_err(path))?;
    // If we are the last connection to close, keep -wal so that the next start can
    // prove it continues the same history instead of taking a snapshot.
    let mut on: std::os::raw::c_int = 1;
    conn.file_control(None::<&str>, rusqlite::FileControl::PersistWal(&mut on))
        .map_err(sql_err(path))?;
    Ok(conn)
}

/// Retries every 50 µs for the first 100 ms, then every millisecond, for about 5 s.
fn eager_busy(attempt: i32) -> bool {
    match attempt {
        0..2000 => std::thread::sleep(Duration::from_micros(50)),
        2000..6900 => std::thread::sleep(Duration::from_millis(1)),
        _ => return false,
    }
    true
}

impl Connections {
    /// Opens both connections, switching the database to WAL mode if needed, and
    /// starts the long-lived read transaction.
    pub fn open(path: &Path, busy: Duration) -> Result<Self, EngineError> {
        let reader = open(path, busy)?;
        let mode: String = reader
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(sql_err(path))?;
        if !mode.eq_ignore_ascii_case("wal") {
            let now: String = reader
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                .map_err(sql_err(path))?;
            if !now.eq_ignore_ascii_case("wal") {
                return Err(EngineError::NotWal {
                    path: path.to_path_buf(),
                    mode: now,
                });
            }
            info!(path = %path.display(), from = %mode, "switched the database to WAL mode");
        }
        let locking: String = reader
            .query_row("PRAGMA locking_mode", [], |r| r.get(0))
            .map_err(sql_err(path))?;
        if !locking.eq_ignore_ascii_case("normal") {
            return Err(EngineError::NotWal {
                path: path.to_path_buf(),
                mode: format!("locking_mode={locking}"),
            });
        }
        let mut barrier = open(path, busy)?;
        // SQLite's default busy handler sleeps in growing steps and loses the write lock
        // to a writer that commits in a tight loop; retry often, for about `busy`.
        barrier
            .busy_handler(Some(eager_busy))
            .map_err(sql_err(path))?;
        let mut c = Self {
            reader,
            barrier,
            in_read_tx: false,
        };
        c.begin_read(path)?;
        Ok(c)
    }

    pub fn page_size(&self, path: &Path) -> Result<u32, EngineError> {
        self.reader
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(sql_err(path))
    }

    fn begin_read(&mut self, path: &Path) -> Result<(), EngineError> {
        // A read transaction starts at its first read; a schema probe costs one page.
        self.reader.execute_batch("BEGIN").map_err(sql_err(path))?;
        self.reader
            .query_row(
                "SELECT count(*) FROM (SELECT 1 FROM sqlite_schema LIMIT 1)",
                [],
                |_| Ok(()),
            )
            .map_err(sql_err(path))?;
        self.in_read_tx = true;
        Ok(())
    }

    fn end_read(&mut self, path: &Path) -> Result<(), EngineError> {
        if self.in_read_tx {
            self.reader.execute_batch("COMMIT").map_err(sql_err(path))?;
            self.in_read_tx = false;
        }
        Ok(())
    }

    /// Takes the write lock. Application writers wait (in their busy handler) until
    /// [`Self::release_barrier`].
    pub fn take_barrier(&mut self, path: &Path) -> Result<(), EngineError> {
        self.barrier
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(sql_err(path))
    }

    pub fn release_barrier(&mut self, path: &Path) -> Result<(), EngineError> {
        self.barrier
            .execute_batch("ROLLBACK")
            .map_err(sql_err(path))
    }

    /// Ends the read transaction, checkpoints, and begins it again. With `truncate`
    /// false this is PASSIVE (never waits for anyone); TRUNCATE waits for readers up
    /// to the busy timeout and must not run under our own barrier.
    pub fn checkpoint(
        &mut self,
        path: &Path,
        truncate: bool,
    ) -> Result<CheckpointResult, EngineError> {
        self.end_read(path)?;
        let sql = if truncate {
            "PRAGMA wal_checkpoint(TRUNCATE)"
        } else {
            "PRAGMA wal_checkpoint(PASSIVE)"
        };
        let res = self.reader.query_row(sql, [], |r| {
            Ok(CheckpointResult {
                busy: r.get::<_, i64>(0)? != 0,
                log: r.get(1)?,
                checkpointed: r.get(2)?,
            })
        });
        // The read transaction must come back whatever the checkpoint did.
        let again = self.begin_read(path);
        let res = res.map_err(sql_err(path))?;
        again?;
        Ok(res)
    }

    /// Moves the read transaction forward to the current end of the WAL. Only under the
    /// barrier: otherwise frames committed in between could be reset away unseen.
    pub fn restart_read(&mut self, path: &Path) -> Result<(), EngineError> {
        self.end_read(path)?;
        self.begin_read(path)
    }

    /// A PASSIVE checkpoint from the barrier connection while it holds no transaction:
    /// copies frames up to our read mark while the application keeps writing.
    pub fn passive_unlocked(&mut self, path: &Path) -> Result<CheckpointResult, EngineError> {
        self.barrier
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok(CheckpointResult {
                    busy: r.get::<_, i64>(0)? != 0,
                    log: r.get(1)?,
                    checkpointed: r.get(2)?,
                })
            })
            .map_err(sql_err(path))
    }

    /// Ends the read transaction for good (shutdown).
    pub fn close(mut self, path: &Path) -> Result<(), EngineError> {
        self.end_read(path)
    }
}
