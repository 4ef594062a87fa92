//! Litestream's VFS extension (`litestream-vfs` 0.5.17, loaded into Python's sqlite3)
//! queries a replica that `replica` writes, in place, while a writer commits: every
//! state it shows keeps the source's invariant, a long-lived connection sees new
//! commits, and a new one sees the final state. On file:// and S3.
//!
//! The reader runs in its own Python process: once loaded, the extension breaks
//! every other SQLite connection of its process.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tempfile::TempDir;

use crate::backends::StoreFixture;
use crate::backends::s3::S3;
use crate::support::{Proc, file_url, open_wal_db, replica_cmd, run, wait_until};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Reads the replica through the VFS: `watch SECONDS` prints every state it sees on
/// one connection for that long; `until ROWS SECONDS` opens a new connection and
/// waits for at least ROWS rows. One line per state: rows, sum, TXID.
const READER: &str = r#"
import sqlite3, sys, time, urllib.parse
import litestream_vfs
url, mode, arg, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
loader = sqlite3.connect(":memory:")
litestream_vfs.load(loader)
conn = sqlite3.connect("file:replica.db?vfs=litestream&poll_interval=200ms&replica_url="
                       + urllib.parse.quote(url, safe=""), uri=True)
end = time.time() + (arg if mode == "watch" else seconds)
last = None
while time.time() < end:
    rows, total = conn.execute(
        "SELECT (SELECT count(*) FROM a), coalesce((SELECT sum(n) FROM a), 0) + coalesce((SELECT sum(n) FROM b), 0)"
    ).fetchone()
    txid = conn.execute("SELECT litestream_txid()").fetchone()[0]
    if (rows, total) != last:
        print(rows, total, txid, flush=True)
        last = (rows, total)
    if mode == "until" and rows >= arg:
        sys.exit(0)
    time.sleep(0.05)
sys.exit(0 if mode == "watch" else 1)
"#;

fn python() -> String {
    std::env::var("REPLICA_LITESTREAM_VFS_PYTHON").unwrap_or_else(|_| {
        panic!("REPLICA_LITESTREAM_VFS_PYTHON is not set: run `cargo xtask test` (it installs litestream-vfs)")
    })
}

/// Runs the reader; the states it printed, as (rows, sum).
fn read(
    script: &Path,
    url: &str,
    mode: &str,
    arg: u64,
    creds: &dyn Fn(&mut Command),
) -> (bool, Vec<(i64, i64)>, String) {
    let mut cmd = Command::new(python());
    cmd.arg(script)
        .args([url, mode, &arg.to_string(), "30"])
        .env_remove("AWS_CA_BUNDLE");
    creds(&mut cmd);
    let out = run(&mut cmd);
    let states = out
        .stdout
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect();
    (out.success(), states, format!("{out}"))
}

fn scenario(url: &str, creds: &dyn Fn(&mut Command)) {
    let dir = TempDir::new().expect("tempdir");
    let script = dir.path().join("reader.py");
    std::fs::write(&script, READER).expect("write the reader");
    let db = dir.path().join("src.db");
    let conn = open_wal_db(&db);
    conn.execute_batch(
        "CREATE TABLE a(id INTEGER PRIMARY KEY, n INTEGER); CREATE TABLE b(id INTEGER PRIMARY KEY, n INTEGER);",
    )
    .expect("schema");
    let mut cmd = replica_cmd();
    creds(&mut cmd);
    cmd.args(["replicate", "--sync-interval", "100ms"])
        .arg(&db)
        .arg(url);
    let mut rep = Proc::spawn("replicate", cmd);
    assert!(
        wait_until(TIMEOUT, || rep.stderr().contains("snapshot uploaded")),
        "{}",
        rep.output_report()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = open_wal_db(&db);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                c.execute_batch(&format!(
                    "BEGIN; INSERT INTO a(n) VALUES ({i}); INSERT INTO b(n) VALUES (-{i}); COMMIT;"
                ))
                .expect("transfer");
                std::thread::sleep(Duration::from_millis(10));
            }
            i
        })
    };
    // One connection for four seconds while the writer commits: it moves on, and
    // every state it shows is whole.
    let (ok, states, report) = read(&script, url, "watch", 4, creds);
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().expect("writer");
    assert!(ok, "{report}");
    assert!(
        states.len() >= 3,
        "the VFS connection did not follow: {states:?}\n{report}"
    );
    assert!(
        states.iter().all(|&(_, sum)| sum == 0),
        "half a transaction: {states:?}"
    );
    assert!(
        states.windows(2).all(|w| w[0].0 <= w[1].0),
        "went back: {states:?}"
    );
    // A new connection sees everything once it is in the store.
    let (ok, states, report) = read(&script, url, "until", written, creds);
    assert!(
        ok,
        "the VFS never showed {written} rows\n{report}\n{}",
        rep.output_report()
    );
    assert_eq!(states.last().map(|s| s.0), Some(written as i64));
    rep.stop_ok(TIMEOUT);
    drop(conn);
}

#[test]
fn litestreams_vfs_reads_a_live_file_replica() {
    let dir = TempDir::new().expect("tempdir");
    scenario(&file_url(&dir.path().join("replica")), &|_| {});
}

#[test]
fn litestreams_vfs_reads_a_live_s3_replica() {
    let s3 = S3::new();
    let url = s3.url("vfs/app");
    scenario(&url, &|cmd| s3.creds(cmd));
}
