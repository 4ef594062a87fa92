//! Long-running replication with the default intervals scaled down (sync 200 ms,
//! snapshots every 2 s, compaction levels 1 s / 3 s / 6 s, L0 kept 3 s, retention
//! 10 s): a writer runs long enough to cross many compactions, snapshots and
//! retention passes, then every point of the retention window is restored by
//! timestamp and by TXID, with `replica` and with Litestream 0.5.17, and checked
//! against what the writer had committed at that moment.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::support::{
    self, LtxFile, Proc, file_url, integrity_check, litestream_restore, ltx_list, open_wal_db,
    replica_cmd, replicator_cmd, restore, stop_clean, txid_hex,
};

const RETENTION: Duration = Duration::from_secs(10);
const SNAPSHOT: Duration = Duration::from_secs(2);
/// How far behind a timestamp restore may be: the coarsest level still holding that
/// moment (L1, 1 s) plus a sync interval and the time to ship it.
const GRANULARITY: Duration = Duration::from_millis(2500);
const WRITE_FOR: Duration = Duration::from_secs(24);

/// One commit of the writer: row `k` was inserted between `begun` and `done`.
struct Commit {
    begun: SystemTime,
    done: SystemTime,
}

/// Rows are inserted as 1, 2, 3, … one per transaction, so a consistent database
/// holds exactly the rows 1..=n: this returns n, or panics on anything else.
#[track_caller]
fn prefix_len(what: &str, path: &Path) -> usize {
    assert_eq!(
        integrity_check(path),
        ["ok"],
        "{what}: integrity_check failed"
    );
    let conn = support::open_read_only(path);
    let (count, max, bad): (i64, Option<i64>, i64) = conn
        .query_row(
            "SELECT count(*), max(id), sum(v != 'row ' || id) FROM t",
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get::<_, Option<i64>>(2)?.unwrap_or(0),
                ))
            },
        )
        .unwrap_or_else(|e| panic!("{what}: reading rows: {e}"));
    assert_eq!(bad, 0, "{what}: rows with wrong contents");
    assert_eq!(
        Some(count),
        max.or(Some(0)),
        "{what}: {count} rows but the highest id is {max:?}: not a prefix"
    );
    count as usize
}

fn restore_with(tool: &str, url: &str, out: &Path, at: &[&str]) -> usize {
    let o = if tool == "replica" {
        restore(url, out, at)
    } else {
        litestream_restore(url, out, at)
    };
    assert!(o.success(), "{tool} restore {at:?} failed\n{o}");
    prefix_len(&format!("{tool} restore {at:?}"), out)
}

fn rfc3339(t: SystemTime) -> String {
    OffsetDateTime::from(t).format(&Rfc3339).expect("format")
}

#[test]
fn history_is_compacted_retained_and_restorable_at_every_point() {
    let dir = tempfile::Builder::new()
        .prefix("replica-long-")
        .tempdir()
        .expect("tempdir");
    let db = dir.path().join("app.db");
    let url = file_url(&dir.path().join("replica"));
    let conn = open_wal_db(&db);
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .expect("schema");

    let mut cmd = replica_cmd();
    cmd.arg("replicate").arg(&db).arg(&url).args([
        "--sync-interval",
        "200ms",
        "--snapshot-interval",
        "2s",
        "--levels",
        "1s,3s,6s",
        "--l0-retention",
        "3s",
        "--retention",
        "10s",
    ]);
    let mut rep = Proc::spawn("replica replicate", cmd);

    let mut commits: Vec<Commit> = Vec::new();
    let started = Instant::now();
    while started.elapsed() < WRITE_FOR {
        let k = commits.len() + 1;
        let begun = SystemTime::now();
        conn.execute("INSERT INTO t(id, v) VALUES (?1, 'row ' || ?1)", [k as i64])
            .expect("insert");
        commits.push(Commit {
            begun,
            done: SystemTime::now(),
        });
        if k.is_multiple_of(150) {
            // The application checkpoints too; it must never cost history.
            let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        }
        std::thread::sleep(Duration::from_millis(15));
        assert!(rep.is_running(), "replicator died\n{}", rep.output_report());
    }
    // Let the last writes ship and a retention pass see the final state, then stop, so
    // that the window does not move while it is restored.
    std::thread::sleep(Duration::from_millis(1500));
    stop_clean(&mut rep);
    let listed_at = SystemTime::now();
    let files = ltx_list(&url);

    // Every compaction level was written, and retention removed the start of history.
    for level in [1, 2, 3] {
        assert!(
            files.iter().any(|f| f.level == level),
            "no L{level} file after {WRITE_FOR:?}: {files:?}"
        );
    }
    let snapshots: Vec<&LtxFile> = files.iter().filter(|f| f.level == 9).collect();
    let at = |f: &LtxFile| SystemTime::from(f.created);
    // The oldest snapshot kept is the base of the window: older than its start (so
    // the whole window restores) but not by more than a snapshot interval (plus the
    // second a retention pass may lag), and nothing older than it is left.
    let base = snapshots
        .iter()
        .min_by_key(|f| f.max)
        .unwrap_or_else(|| panic!("no snapshot at all: {files:?}"));
    assert!(
        at(base) < listed_at - RETENTION,
        "the oldest snapshot ({}) is inside the window: part of the window cannot be restored",
        base.created
    );
    assert!(
        at(base) >= listed_at - RETENTION - SNAPSHOT - Duration::from_secs(2),
        "a snapshot from {} is older than the window needs: {snapshots:?}",
        base.created
    );
    for f in &files {
        assert!(
            f.max > base.max || f.level == 9,
            "L{} {}-{} is older than the retention window (base snapshot {}): {files:?}",
            f.level,
            txid_hex(f.min),
            txid_hex(f.max),
            txid_hex(base.max)
        );
    }
    let l0_start = files.iter().filter(|f| f.level == 0).map(|f| f.min).min();
    assert!(
        l0_start.is_some_and(|m| m > base.max),
        "L0 retention kept old L0 files: {files:?}"
    );

    // Every second of the window, by timestamp, with both tools (Litestream refuses
    // times outside its files' creation times).
    let newest = files.iter().map(at).max().expect("files");
    let oldest = files.iter().map(at).min().expect("files");
    let mut checked = 0;
    let mut t = (listed_at - RETENTION).max(oldest) + Duration::from_millis(300);
    while t <= newest {
        let ts = rfc3339(t);
        let ours = restore_with(
            "replica",
            &url,
            &dir.path().join(format!("ts-{checked}.db")),
            &["--timestamp", &ts],
        );
        let theirs = restore_with(
            "litestream",
            &url,
            &dir.path().join(format!("ts-{checked}-ls.db")),
            &["-timestamp", &ts],
        );
        assert_eq!(ours, theirs, "replica and Litestream disagree at {ts}");
        if ours > 0 {
            assert!(
                commits[ours - 1].begun < t,
                "restore at {ts} holds row {ours}, committed after it"
            );
        }
        let due = commits.iter().filter(|c| c.done + GRANULARITY < t).count();
        assert!(
            ours >= due,
            "restore at {ts} holds {ours} rows, but {due} were committed {GRANULARITY:?} before"
        );
        checked += 1;
        t += Duration::from_secs(1);
    }
    assert!(checked >= 8, "only {checked} timestamps in the window");

    // Every file boundary still present, by TXID, with both tools: the same rows, and
    // never fewer for a later TXID.
    let mut txids: Vec<u64> = files
        .iter()
        .filter(|f| f.level < 9)
        .map(|f| f.max)
        .collect();
    txids.sort_unstable();
    txids.dedup();
    let step = (txids.len() / 12).max(1);
    let mut last = 0;
    for (i, txid) in txids.iter().step_by(step).enumerate() {
        let hex = txid_hex(*txid);
        let ours = restore_with(
            "replica",
            &url,
            &dir.path().join(format!("tx-{i}.db")),
            &["--txid", &hex],
        );
        let theirs = restore_with(
            "litestream",
            &url,
            &dir.path().join(format!("tx-{i}-ls.db")),
            &["-txid", &hex],
        );
        assert_eq!(
            ours, theirs,
            "replica and Litestream disagree at TXID {hex}"
        );
        assert!(
            ours >= last,
            "TXID {hex} restores {ours} rows, an earlier one {last}"
        );
        last = ours;
    }

    // And the head: every committed row.
    let latest: PathBuf = dir.path().join("latest.db");
    assert_eq!(restore_with("replica", &url, &latest, &[]), commits.len());
    let latest_ls = dir.path().join("latest-ls.db");
    assert_eq!(
        restore_with("litestream", &url, &latest_ls, &[]),
        commits.len()
    );
}

/// A database deleted and recreated under a running replicator is noticed and
/// replicated from one new snapshot: never its frames on top of the old history, and
/// never a loop of snapshots.
#[test]
fn database_recreated_underneath_is_followed_with_one_snapshot() {
    let dir = tempfile::Builder::new()
        .prefix("replica-replaced-")
        .tempdir()
        .expect("tempdir");
    let db = dir.path().join("app.db");
    let url = file_url(&dir.path().join("replica"));
    let fill = |conn: &rusqlite::Connection, from: usize, to: usize| {
        for k in from..=to {
            conn.execute("INSERT INTO t(id, v) VALUES (?1, 'row ' || ?1)", [k as i64])
                .expect("insert");
        }
    };
    let conn = open_wal_db(&db);
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .expect("schema");
    fill(&conn, 1, 300);

    let mut cmd = replicator_cmd(&db, &url, &[]);
    // The test counts a line logged at info level.
    cmd.env("REPLICA_LOG", "info");
    let mut rep = Proc::spawn("replica replicate", cmd);
    let snapshots = || ltx_list(&url).iter().filter(|f| f.level == 9).count();
    assert!(
        support::wait_until(Duration::from_secs(20), || snapshots() == 1),
        "no first snapshot\n{}",
        rep.output_report()
    );
    fill(&conn, 301, 400);
    std::thread::sleep(Duration::from_millis(500));

    // The application deletes its database and starts a new, smaller one.
    drop(conn);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    let conn = open_wal_db(&db);
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .expect("schema");
    fill(&conn, 1, 40);
    std::thread::sleep(Duration::from_secs(3));
    fill(&conn, 41, 60);
    std::thread::sleep(Duration::from_secs(2));

    assert!(rep.is_running(), "replicator died\n{}", rep.output_report());
    assert_eq!(
        snapshots(),
        2,
        "expected exactly one snapshot for the new file\n{}",
        rep.output_report()
    );
    stop_clean(&mut rep);
    assert_eq!(
        rep.stderr().matches("database file was replaced").count(),
        1,
        "{}",
        rep.output_report()
    );
    let out = dir.path().join("restored.db");
    assert_eq!(restore_with("replica", &url, &out, &[]), 60);
    let out_ls = dir.path().join("restored-ls.db");
    assert_eq!(restore_with("litestream", &url, &out_ls, &[]), 60);
}
