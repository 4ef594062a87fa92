//! Tools that meet a running replication: `replica sync` waits until what was
//! committed is in the store (through an outage it times out, after it succeeds),
//! and `replica verify --against` compares a replica with the live database at the
//! same TXID, exactly, while a writer commits.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::Connection;
use tempfile::TempDir;

use crate::backends::StoreFixture;
use crate::backends::s3::S3;
use crate::operate::{free_addr, metric, until_ready};
use crate::support::{
    FaultPlan, FaultProxy, Proc, file_url, new_db, replica_cmd, run, user_dump, write_batches,
};

const TIMEOUT: Duration = Duration::from_secs(60);

fn json(out: &crate::support::Output) -> serde_json::Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn sync_waits_for_the_store_and_times_out_while_it_is_away() {
    let s3 = S3::new();
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = new_db(&db);
    let upstream = s3.endpoint().strip_prefix("http://").expect("http");
    let proxy = FaultProxy::start(upstream, FaultPlan::HEALTHY);
    let url = s3
        .url("live/sync")
        .replace(s3.endpoint(), &format!("http://{}", proxy.addr));
    let addr = free_addr();
    let mut cmd = replica_cmd();
    s3.creds(&mut cmd);
    cmd.args(["replicate", "--metrics-addr", &addr])
        .arg(&db)
        .arg(&url);
    let mut rep = Proc::spawn("replicate", cmd);
    until_ready(&addr, &rep);
    let sync = |extra: &[&str]| {
        run(replica_cmd()
            .args(["sync", "--json", "--addr", &addr])
            .args(extra))
    };
    let first = sync(&[]);
    assert_eq!(first.code(), Some(0), "{first}");

    // Each commit is in the store when sync returns: a restore up to the TXID it names
    // has it. The commit costs its scheduled upload and no other.
    for (round, extra) in [(1, &[][..]), (2, &["--now"][..])] {
        let uploads = metric(&addr, "replica_uploads_total", &db, "").expect("uploads");
        write_batches(&conn, 1, 5);
        let out = sync(extra);
        assert_eq!(out.code(), Some(0), "{out}");
        let report = json(&out);
        let d = &report["databases"][0];
        assert_eq!(d["status"], "stored", "{report}");
        let txid = d["txid"].as_str().expect("txid").to_owned();
        assert_eq!(
            metric(&addr, "replica_uploads_total", &db, ""),
            Some(uploads + 1.0),
            "round {round}"
        );
        let restored = dir.path().join(format!("at-{round}.db"));
        let mut cmd = replica_cmd();
        s3.creds(&mut cmd);
        let r = run(cmd
            .args(["restore", "--txid", &txid, "-o"])
            .arg(&restored)
            .arg(&url));
        assert!(r.success(), "{r}");
        assert_eq!(user_dump(&restored), user_dump(&db), "round {round}");
    }

    // The store goes away: a sync gives up at its timeout and says what it waited for.
    proxy.set_plan(FaultPlan::OUTAGE);
    write_batches(&conn, 1, 5);
    let out = sync(&["--timeout", "2s"]);
    assert_eq!(out.code(), Some(1), "{out}");
    let report = json(&out);
    let error = report["databases"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("does not hold TXID"), "{report}");
    let text = run(replica_cmd().args(["sync", "--timeout", "1s", "--addr", &addr]));
    assert_eq!(text.code(), Some(1), "{text}");
    assert!(text.stdout.contains("NOT STORED"), "{text}");

    // It comes back: the same wait succeeds, and the commit is there.
    proxy.set_plan(FaultPlan::HEALTHY);
    let out = sync(&[]);
    assert_eq!(out.code(), Some(0), "{out}");
    rep.stop_ok(TIMEOUT);
    let restored = dir.path().join("final.db");
    let mut cmd = replica_cmd();
    s3.creds(&mut cmd);
    let r = run(cmd.args(["restore", "-o"]).arg(&restored).arg(&url));
    assert!(r.success(), "{r}");
    assert_eq!(user_dump(&restored), user_dump(&db));

    // With no process at the address, sync fails at once and names it.
    let out = sync(&["--timeout", "1s"]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains(&addr), "{out}");
    drop(conn);
}

/// Transfers between two tables, keeping their sum at zero, until `stop`.
fn transfers(db: &Path, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<i64> {
    let db = db.to_path_buf();
    std::thread::spawn(move || {
        let c = Connection::open(&db).expect("open");
        c.busy_timeout(Duration::from_secs(10)).expect("busy");
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            c.execute_batch(&format!(
                "BEGIN; INSERT INTO a(n) VALUES ({i}); INSERT INTO b(n) VALUES (-{i}); COMMIT;"
            ))
            .expect("transfer");
            std::thread::sleep(Duration::from_micros(200));
        }
        i
    })
}

#[test]
fn verify_against_compares_exactly_while_the_application_writes() {
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = new_db(&db);
    conn.execute_batch(
        "CREATE TABLE a(id INTEGER PRIMARY KEY, n INTEGER); CREATE TABLE b(id INTEGER PRIMARY KEY, n INTEGER);",
    )
    .expect("schema");
    write_batches(&conn, 3, 10);
    let url = file_url(&dir.path().join("replica"));
    let verify = |extra: &[&str]| {
        run(replica_cmd()
            .args(["verify", "--json", "--against"])
            .arg(&db)
            .args(extra)
            .arg(&url))
    };

    // Nothing replicates it: the database must equal the replica's latest state.
    let once = run(replica_cmd()
        .args(["replicate", "--once"])
        .arg(&db)
        .arg(&url));
    assert!(once.success(), "{once}");
    let good = verify(&[]);
    assert_eq!(good.code(), Some(0), "{good}");
    let report = json(&good);
    assert_eq!(report["differences"], serde_json::json!([]), "{report}");
    assert_eq!(report["against"], db.display().to_string().as_str());

    // A commit the replica does not have, then a changed value: both are named.
    conn.execute("INSERT INTO a(n) VALUES (1)", [])
        .expect("insert");
    let bad = verify(&[]);
    assert_eq!(bad.code(), Some(1), "{bad}");
    let report = json(&bad);
    assert_eq!(report["status"], "failure", "{report}");
    assert_eq!(
        report["differences"][0],
        format!("table a: 1 rows in {}, 0 in the replica", db.display()).as_str(),
        "{report}"
    );
    conn.execute("DELETE FROM a", []).expect("delete");
    conn.execute(
        "UPDATE t SET v = 'changed' WHERE id = (SELECT max(id) FROM t)",
        [],
    )
    .expect("update");
    let text = run(replica_cmd()
        .args(["verify", "--against"])
        .arg(&db)
        .arg(&url));
    assert_eq!(text.code(), Some(1), "{text}");
    assert!(
        text.stdout.contains("table t: same row count")
            && text.stdout.contains("different content"),
        "{text}"
    );
    let once = run(replica_cmd()
        .args(["replicate", "--once"])
        .arg(&db)
        .arg(&url));
    assert!(once.success(), "{once}");
    assert_eq!(verify(&[]).code(), Some(0));

    // While replicate runs and the application writes, only the process can fix a
    // point both sides hold: without its address verify refuses (exit 2), with it
    // the comparison is exact, again and again.
    let addr = free_addr();
    let mut cmd = replica_cmd();
    cmd.args([
        "replicate",
        "--sync-interval",
        "100ms",
        "--metrics-addr",
        &addr,
    ])
    .arg(&db)
    .arg(&url);
    let mut rep = Proc::spawn("replicate", cmd);
    until_ready(&addr, &rep);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = transfers(&db, stop.clone());
    let refused = verify(&[]);
    assert_eq!(refused.code(), Some(2), "{refused}");
    assert!(refused.stderr.contains("--addr"), "{refused}");
    let mut txids = Vec::new();
    for _ in 0..3 {
        let out = verify(&["--addr", &addr]);
        assert_eq!(out.code(), Some(0), "{out}\n{}", rep.output_report());
        let report = json(&out);
        assert_eq!(report["differences"], serde_json::json!([]), "{report}");
        txids.push(report["txid"].as_str().expect("txid").to_owned());
    }
    stop.store(true, Ordering::Relaxed);
    let transfers_done = writer.join().expect("writer");
    assert!(
        txids.windows(2).all(|w| w[0] < w[1]),
        "each verify fixes a later point: {txids:?}"
    );
    assert!(transfers_done > 0);
    // Another database than the process's is refused, not compared.
    let other = run(replica_cmd()
        .args(["verify", "--addr", &addr, "--against"])
        .arg(dir.path().join("other.db"))
        .arg(&url));
    assert_eq!(other.code(), Some(1), "{other}");
    assert!(other.stderr.contains("does not replicate"), "{other}");
    rep.stop_ok(TIMEOUT);
    assert_eq!(
        verify(&[]).code(),
        Some(0),
        "after a clean stop the replica equals the database"
    );
    drop(conn);
}
