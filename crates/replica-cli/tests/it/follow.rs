//! `restore --follow`: a read replica kept current while the source writes. Readers of
//! the follower never see half a source transaction; a follower killed at any moment
//! resumes from its position without a restore; a source replaced underneath, or
//! retention past the follower's position, makes it restore again in place; and in
//! the end the follower equals the source exactly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tempfile::TempDir;

use crate::support::{
    Proc, file_url, ltx_list, open_wal_db, replica_cmd, user_dump, wait_until, write_batches,
};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A source with two tables whose sums cancel out in every transaction.
fn transfer_db(path: &Path) -> Connection {
    let c = open_wal_db(path);
    c.execute_batch(
        "CREATE TABLE a(id INTEGER PRIMARY KEY, n INTEGER);
         CREATE TABLE b(id INTEGER PRIMARY KEY, n INTEGER);
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB);",
    )
    .expect("schema");
    c
}

/// Commits transfers until `stop`, a little apart; returns how many.
/// Commits transfers until `stop`; returns when each one returned (transfer `i`
/// leaves `i` rows in `a`, so its time is at index `i - 1`).
fn transfers(db: &Path, stop: Arc<AtomicBool>) -> JoinHandle<Vec<Instant>> {
    let db = db.to_path_buf();
    std::thread::spawn(move || {
        let c = open_wal_db(&db);
        let mut committed = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let i = committed.len() + 1;
            c.execute_batch(&format!(
                "BEGIN; INSERT INTO a(n) VALUES ({i}); INSERT INTO b(n) VALUES (-{i});
                 INSERT INTO t(v, b) VALUES ('row {i}', randomblob(300)); COMMIT;"
            ))
            .expect("transfer");
            committed.push(Instant::now());
            std::thread::sleep(Duration::from_millis(2));
        }
        committed
    })
}

/// How long after each transfer returned a reader first saw it, in milliseconds,
/// from the readers' (rows, first seen) observations.
fn follow_lags(committed: &[Instant], seen: &[Vec<(i64, Instant)>]) -> Vec<u128> {
    let mut first_seen: Vec<Option<Instant>> = vec![None; committed.len()];
    for (rows, at) in seen.iter().flatten() {
        let rows = usize::try_from(*rows)
            .expect("row count")
            .min(committed.len());
        for slot in first_seen.iter_mut().take(rows) {
            if slot.is_none_or(|t| *at < t) {
                *slot = Some(*at);
            }
        }
    }
    committed
        .iter()
        .zip(&first_seen)
        .filter_map(|(c, s)| s.map(|s| s.saturating_duration_since(*c).as_millis()))
        .collect()
}

/// Reads the follower until `stop`, each read in its own transaction: the invariant
/// must hold in every one. Returns the distinct row counts it saw.
fn reader(db: &Path, stop: Arc<AtomicBool>) -> JoinHandle<Vec<(i64, Instant)>> {
    let db = db.to_path_buf();
    std::thread::spawn(move || {
        let c = Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the follower");
        c.busy_timeout(Duration::from_secs(10)).expect("busy");
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let (rows, sum): (i64, i64) = c
                .query_row(
                    "SELECT (SELECT count(*) FROM a), coalesce((SELECT sum(n) FROM a), 0) + coalesce((SELECT sum(n) FROM b), 0)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .expect("read the follower");
            assert_eq!(sum, 0, "a reader saw half a transaction at {rows} rows");
            if seen.last().map(|(r, _)| *r) != Some(rows) {
                seen.push((rows, Instant::now()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        seen
    })
}

fn follower(out: &Path, url: &str) -> Proc {
    let mut cmd = replica_cmd();
    cmd.args(["restore", "--follow", "--follow-interval", "100ms", "-o"])
        .arg(out)
        .arg(url);
    let p = Proc::spawn("follower", cmd);
    assert!(
        wait_until(TIMEOUT, || p.stderr().contains("following")),
        "the follower did not start\n{}",
        p.output_report()
    );
    p
}

fn primary(db: &Path, url: &str, extra: &[&str]) -> Proc {
    let mut cmd = replica_cmd();
    cmd.args(["replicate", "--sync-interval", "100ms"])
        .args(extra)
        .arg(db)
        .arg(url);
    let p = Proc::spawn("replicate", cmd);
    assert!(
        wait_until(TIMEOUT, || p.stderr().contains("snapshot uploaded")
            || p.stderr().contains("resuming replication")),
        "replication did not start\n{}",
        p.output_report()
    );
    p
}

/// A source database replicated to a file:// replica, and a follower of it.
struct Pair {
    dir: TempDir,
    db: PathBuf,
    conn: Connection,
    url: String,
    rep: Proc,
    out: PathBuf,
    fol: Proc,
}

fn source_and_follower() -> Pair {
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("src.db");
    let conn = transfer_db(&db);
    let url = file_url(&dir.path().join("replica"));
    let rep = primary(&db, &url, &[]);
    let out = dir.path().join("follower.db");
    let fol = follower(&out, &url);
    Pair {
        dir,
        db,
        conn,
        url,
        rep,
        out,
        fol,
    }
}

#[track_caller]
fn converges(follower: &Path, source: &Path, p: &mut Proc) {
    let mut last = Vec::new();
    let equal = wait_until(TIMEOUT, || {
        last = user_dump(follower);
        last == user_dump(source)
    });
    assert!(
        equal,
        "the follower did not converge ({} lines)\n{}",
        last.len(),
        p.output_report()
    );
}

#[test]
fn readers_of_a_follower_see_whole_transactions_and_it_converges() {
    let Pair {
        dir: _dir,
        db,
        conn,
        url: _,
        mut rep,
        out,
        mut fol,
    } = source_and_follower();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = transfers(&db, stop.clone());
    let readers: Vec<_> = (0..2).map(|_| reader(&out, stop.clone())).collect();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let committed = writer.join().expect("writer");
    let seen: Vec<Vec<(i64, Instant)>> = readers
        .into_iter()
        .map(|r| r.join().expect("reader"))
        .collect();
    converges(&out, &db, &mut fol);
    // The readers watched it move while the writer ran.
    for s in &seen {
        assert!(
            s.len() >= 3,
            "a reader saw too few states: {s:?} of {} transfers",
            committed.len()
        );
    }
    // Freshness: a commit reaches the follower's readers about one sync interval
    // (100 ms) plus one follow interval (100 ms) after it returned. The median is
    // held to that with room for a loaded test machine; the worst case only has to
    // show that following never stalled. The benchmark measures the real figures.
    let mut lags = follow_lags(&committed, &seen);
    lags.sort_unstable();
    let (median, worst) = (lags[lags.len() / 2], lags[lags.len() - 1]);
    assert!(
        lags.len() * 2 >= committed.len() && median <= 600 && worst <= 5_000,
        "follow lag: median {median} ms, worst {worst} ms over {} of {} transfers seen live",
        lags.len(),
        committed.len()
    );
    fol.stop_ok(TIMEOUT);
    assert!(
        fol.stderr().contains("stopped following"),
        "{}",
        fol.output_report()
    );
    rep.stop_ok(TIMEOUT);
    drop(conn);
}

/// Files of levels 0-8 that cover TXID `t`.
fn covering(url: &str, t: u64) -> usize {
    ltx_list(url)
        .iter()
        .filter(|f| f.level < 9 && f.min <= t && f.max >= t)
        .count()
}

/// The position a follower recorded, from its log's last "stopped following" or
/// "following" line.
fn position(p: &Proc) -> u64 {
    let log = p.stderr();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("following") && l.contains("txid="))
        .unwrap_or_else(|| panic!("no position in the log\n{log}"));
    let hex = line
        .split("txid=\"")
        .nth(1)
        .and_then(|r| r.get(..16))
        .expect("txid field");
    u64::from_str_radix(hex, 16).expect("hex txid")
}

#[test]
fn a_killed_follower_resumes_and_one_that_cannot_continue_restores_again() {
    let Pair {
        dir: _dir,
        db,
        conn,
        url,
        mut rep,
        out,
        mut fol,
    } = source_and_follower();

    // Killed (SIGKILL) at moments the writer chooses, three times: each restart
    // resumes from the saved position; none restores.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = transfers(&db, stop.clone());
    for (i, pause) in [350u64, 520, 730].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(pause));
        fol.kill();
        fol = follower(&out, &url);
        assert!(
            fol.stderr().contains("resuming to follow") && !fol.stderr().contains("restore plan"),
            "restart {i} did not resume\n{}",
            fol.output_report()
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    converges(&out, &db, &mut fol);

    // The source database is replaced by another one: its replica starts a new
    // history (a snapshot, and the same image as the level-0 file of its TXID); the
    // follower takes it in place, and readers keep their connections.
    let keep_reading = Connection::open(&out).expect("a reader stays open");
    rep.stop_ok(TIMEOUT);
    drop(conn);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let conn = transfer_db(&db);
    write_batches(&conn, 4, 10);
    let mut rep = primary(&db, &url, &[]);
    converges(&out, &db, &mut fol);
    let rows: i64 = keep_reading
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("the open reader reads the new state");
    assert_eq!(
        rows,
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
            .expect("count")
    );
    drop(keep_reading);

    // Stopped, then left behind: retention deletes every file after its position
    // before it comes back. It says so, and restores again.
    fol.stop_ok(TIMEOUT);
    let at = position(&fol);
    rep.stop_ok(TIMEOUT);
    let fast = [
        "--snapshot-interval",
        "300ms",
        "--retention",
        "1s",
        "--levels",
        "200ms",
        "--l0-retention",
        "200ms",
    ];
    let mut rep = primary(&db, &url, &fast);
    let gone = wait_until(TIMEOUT, || {
        write_batches(&conn, 1, 5);
        covering(&url, at + 1) == 0
    });
    assert!(gone, "retention kept TXID {at:x}\n{}", rep.output_report());
    let mut fol = follower(&out, &url);
    assert!(
        wait_until(TIMEOUT, || fol
            .stderr()
            .contains("restored the follower again")),
        "{}",
        fol.output_report()
    );
    assert!(
        fol.stderr().contains("retention"),
        "{}",
        fol.output_report()
    );
    rep.stop_ok(TIMEOUT);
    converges(&out, &db, &mut fol);
    fol.stop_ok(TIMEOUT);
    drop(conn);
}

/// A follower becomes the primary: stopped, it folds its WAL into the database and
/// records its position; once the old primary has stopped, `replicate` on the
/// follower's file continues the replica from that TXID, without a snapshot.
#[test]
fn a_stopped_follower_is_promoted_without_a_snapshot() {
    let Pair {
        dir,
        db,
        conn,
        url,
        mut rep,
        out,
        mut fol,
    } = source_and_follower();
    write_batches(&conn, 5, 10);
    converges(&out, &db, &mut fol);
    fol.stop_ok(TIMEOUT);
    rep.stop_ok(TIMEOUT);
    drop(conn);

    let mut promoted = primary(&out, &url, &[]);
    assert!(
        promoted
            .stderr()
            .contains("resuming replication of a restored database")
            && !promoted.stderr().contains("snapshot spooled"),
        "the promotion took a snapshot\n{}",
        promoted.output_report()
    );
    let conn = open_wal_db(&out);
    write_batches(&conn, 3, 10);
    promoted.stop_ok(TIMEOUT);
    let restored = dir.path().join("restored.db");
    let r = crate::support::run(
        replica_cmd()
            .args(["restore", "-o"])
            .arg(&restored)
            .arg(&url),
    );
    assert!(r.success(), "{r}");
    assert_eq!(user_dump(&restored), user_dump(&out));
    drop(conn);
}

/// `restore --config --follow` follows every database of a deployment in one process:
/// on another machine (here, another directory with the same config), a read replica
/// of every shard.
#[test]
fn a_config_follows_every_database_in_one_process() {
    let dir = TempDir::new().expect("tempdir");
    let root = dir.path().join("replica");
    let config = |at: &Path| {
        std::fs::create_dir_all(at.join("data")).expect("mkdir");
        let cfg = at.join("replica.yml");
        std::fs::write(
            &cfg,
            format!(
                "replication:\n  enabled: true\n  replica_url: file://{}\n  sync_interval: 100ms\nshards:\n  count: 2\n  path: ./data/shard_{{index}}.db\ndatabases:\n  - ./data/dlq.db\n",
                root.display()
            ),
        )
        .expect("write config");
        cfg
    };
    let primary_dir = dir.path().join("primary");
    let cfg = config(&primary_dir);
    let names = ["shard_0.db", "shard_1.db", "dlq.db"];
    let conns: Vec<_> = names
        .iter()
        .map(|n| crate::support::new_db(&primary_dir.join("data").join(n)))
        .collect();
    let mut cmd = replica_cmd();
    cmd.args(["replicate", "--config"]).arg(&cfg);
    let mut rep = Proc::spawn("replicate --config", cmd);
    assert!(
        wait_until(TIMEOUT, || rep
            .stderr()
            .matches("snapshot uploaded")
            .count()
            >= 3),
        "{}",
        rep.output_report()
    );

    let follower_dir = dir.path().join("reader");
    let fcfg = config(&follower_dir);
    let mut cmd = replica_cmd();
    cmd.args([
        "restore",
        "--follow",
        "--follow-interval",
        "100ms",
        "--config",
    ])
    .arg(&fcfg);
    let mut fol = Proc::spawn("follow --config", cmd);
    for c in &conns {
        write_batches(c, 3, 5);
    }
    for n in names {
        let (src, copy) = (
            primary_dir.join("data").join(n),
            follower_dir.join("data").join(n),
        );
        converges(&copy, &src, &mut fol);
    }
    fol.stop_ok(TIMEOUT);
    assert_eq!(
        fol.stderr().matches("stopped following").count(),
        3,
        "{}",
        fol.output_report()
    );
    rep.stop_ok(TIMEOUT);
    drop(conns);
}
