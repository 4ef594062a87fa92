//! Points a caller waits on, in process: `sync` returns once what was committed before
//! it is in the store (and costs no upload of its own), and `consistent_read` gives a
//! read transaction whose content is exactly the replica's state at its TXID while a
//! writer keeps committing.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use replica_core::content::{self, ContentDigest};
use replica_core::engine::{EngineConfig, EngineError, Replicator};
use replica_core::memory::{ALL_CAPABILITIES, Faults, MemoryClient};
use replica_core::replica::Replica;
use replica_core::restore::{self, IntegrityCheck, RestoreOptions, Target};
use rusqlite::Connection;

fn open_db(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open database");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
         CREATE TABLE IF NOT EXISTS a(id INTEGER PRIMARY KEY, n INTEGER);
         CREATE TABLE IF NOT EXISTS b(id INTEGER PRIMARY KEY, n INTEGER);",
    )
    .expect("schema");
    conn
}

/// One transaction that keeps sum(a.n) + sum(b.n) = 0.
fn transfer(c: &Connection, i: i64) {
    c.execute_batch(&format!(
        "BEGIN; INSERT INTO a(n) VALUES ({i}); INSERT INTO b(n) VALUES (-{i}); COMMIT;"
    ))
    .expect("transfer");
}

/// Restores `store` at `txid` into `out` with the full integrity check.
async fn restore_at(store: &Arc<MemoryClient>, txid: u64, out: &Path) {
    let opts = RestoreOptions {
        target: Target::Txid(txid),
        integrity: IntegrityCheck::Full,
        ..RestoreOptions::new(out)
    };
    restore::restore(&Replica::new(store.clone()), &opts)
        .await
        .expect("restore");
}

fn count(path: &Path) -> i64 {
    Connection::open(path)
        .and_then(|c| c.query_row("SELECT count(*) FROM a", [], |r| r.get(0)))
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_returns_once_the_commit_is_stored_without_an_upload_of_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    let store = Arc::new(MemoryClient::new(ALL_CAPABILITIES, Faults::default()));
    let conn = open_db(&db);
    let cfg = EngineConfig {
        sync_interval: Duration::from_millis(500),
        ..EngineConfig::default()
    };
    let r = Replicator::start(&db, Replica::new(store.clone()), cfg)
        .await
        .expect("start");
    // Past the first snapshot's upload.
    r.sync(Duration::from_secs(20)).await.expect("first sync");

    for round in 1..=5i64 {
        let uploads = r.stats().uploads.load(Ordering::Relaxed);
        transfer(&conn, round);
        let txid = r.sync(Duration::from_secs(20)).await.expect("sync");
        assert!(r.remote_txid() >= txid);
        // The scheduled upload and nothing more.
        assert_eq!(r.stats().uploads.load(Ordering::Relaxed), uploads + 1);
        let out = dir.path().join(format!("at-{round}.db"));
        restore_at(&store, txid, &out).await;
        assert_eq!(
            count(&out),
            round,
            "TXID {txid:x} lacks the commit before sync"
        );
    }
    // With nothing new committed, the point is the one already stored: no wait.
    let txid = r.sync(Duration::from_millis(300)).await.expect("idle sync");
    assert_eq!(txid, r.remote_txid());
    r.shutdown(Duration::from_secs(30)).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consistent_read_equals_the_replica_at_its_txid_while_a_writer_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    let store = Arc::new(MemoryClient::new(ALL_CAPABILITIES, Faults::default()));
    drop(open_db(&db));
    let cfg = EngineConfig {
        sync_interval: Duration::from_millis(100),
        ..EngineConfig::default()
    };
    let r = Replicator::start(&db, Replica::new(store.clone()), cfg)
        .await
        .expect("start");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = open_db(&db);
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                transfer(&c, i);
            }
            i
        })
    };
    let mut seen = Vec::new();
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let read = r.consistent_read().await.expect("consistent read");
        let live = ContentDigest::read(&read.conn).expect("digest live");
        let sum: i64 = read
            .conn
            .query_row(
                "SELECT (SELECT sum(n) FROM a) + (SELECT sum(n) FROM b)",
                [],
                |r| r.get(0),
            )
            .expect("sum");
        assert_eq!(sum, 0, "a read transaction saw half a transfer");
        r.monitor()
            .wait_stored(read.txid, Duration::from_secs(20))
            .await
            .expect("stored");
        let out = dir.path().join(format!("r{round}.db"));
        restore_at(&store, read.txid, &out).await;
        let restored = ContentDigest::read(
            &content::open_read(&out, Duration::from_secs(1)).expect("open restored"),
        )
        .expect("digest restored");
        assert_eq!(
            live.differences(&restored, "live", "replica"),
            Vec::<String>::new(),
            "round {round}, TXID {:x}",
            read.txid
        );
        seen.push((read.txid, live.tables[0].rows));
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().expect("writer");
    // The writer went on between the reads, and each read caught a later state.
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1),
        "{seen:?}"
    );
    assert!(written as u64 > seen[3].1, "{written} {seen:?}");
    r.shutdown(Duration::from_secs(30)).await.expect("shutdown");

    // A stopped replicator answers at once that it has stopped.
    let m = {
        let r = Replicator::start(&db, Replica::new(store.clone()), cfg)
            .await
            .expect("restart");
        let m = r.monitor();
        r.shutdown(Duration::from_secs(30)).await.expect("shutdown");
        m
    };
    assert!(matches!(
        m.consistent_read().await,
        Err(EngineError::Stopped { .. })
    ));
    assert!(matches!(
        m.sync(Duration::from_secs(5)).await,
        Err(EngineError::Stopped { .. })
    ));
}
