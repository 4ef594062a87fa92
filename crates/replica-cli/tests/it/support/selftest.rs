//! Checks the shared test helpers themselves.

use std::process::Command;
use std::time::Duration;

use crate::support::{self, SIGINT, SIGKILL, SIGTERM};

fn make_db(path: &std::path::Path, extra: Option<&str>) {
    let conn = support::open_wal_db(path);
    conn.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, score REAL, data BLOB, n);
         CREATE INDEX t_name ON t(name);
         CREATE TABLE kv(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
         CREATE TABLE seq(id INTEGER PRIMARY KEY AUTOINCREMENT, x);
         CREATE VIEW v AS SELECT id, name FROM t;
         PRAGMA user_version = 7;",
    )
    .expect("schema");
    let mut ins = conn
        .prepare("INSERT INTO t(name, score, data, n) VALUES (?1, ?2, ?3, ?4)")
        .expect("prepare");
    for i in 0..50i64 {
        let blob: Vec<u8> = (0..(i % 7) as u8).collect();
        let n: Option<i64> = (i % 3 == 0).then_some(i);
        ins.execute(rusqlite::params![
            format!("row \"{i}\", with, commas\n"),
            i as f64 / 3.0,
            blob,
            n
        ])
        .expect("insert");
    }
    conn.execute_batch(
        "INSERT INTO kv VALUES ('b', x'00ff'), ('a', 1.5), ('c', NULL);
         INSERT INTO seq(x) VALUES ('one'), ('two');
         DELETE FROM seq WHERE x = 'one';",
    )
    .expect("more rows");
    if let Some(sql) = extra {
        conn.execute_batch(sql).expect("extra sql");
    }
}

#[test]
fn dump_equal_for_identical_databases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    make_db(&a, None);
    make_db(&b, None);
    let (da, db) = (support::dump(&a), support::dump(&b));
    assert_eq!(da, db);
    // Header pragmas, 5 schema rows (+ sqlite_sequence, autoindex of kv's PK is
    // not separate for WITHOUT ROWID), 50 + 3 + 1 + 1 data rows.
    assert!(da.contains(&"pragma user_version=7".to_string()), "{da:#?}");
    assert!(
        da.iter().any(|l| l.starts_with("schema view \"v\"")),
        "{da:#?}"
    );
    assert_eq!(
        da.iter().filter(|l| l.starts_with("row \"t\" ")).count(),
        50
    );
    assert!(
        da.contains(&"row \"kv\" [t:\"b\", x'00ff']".to_string()),
        "{da:#?}"
    );
    assert!(
        da.contains(
            &"row \"t\" [i:4, i:4, t:\"row \\\"3\\\", with, commas\\n\", r:1.0, x'000102', i:3]"
                .to_string()
        ),
        "{da:#?}"
    );
    assert!(
        da.contains(&"row \"sqlite_sequence\" [i:1, t:\"seq\", i:2]".to_string()),
        "{da:#?}"
    );
    // Rows come out sorted: kv by key.
    let kv: Vec<&String> = da.iter().filter(|l| l.starts_with("row \"kv\"")).collect();
    assert!(
        kv[0].contains("t:\"a\"") && kv[2].contains("t:\"c\""),
        "{kv:#?}"
    );
    assert!(support::integrity_ok(&a));
    // dump() is read-only: the file is unchanged and still dumps the same.
    assert_eq!(support::dump(&a), da);
}

#[test]
fn dump_differs_for_different_databases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.db");
    make_db(&base, None);
    let base_dump = support::dump(&base);
    for (i, extra) in [
        "UPDATE t SET score = score + 1e-12 WHERE id = 10",
        "UPDATE t SET data = x'00' WHERE id = 1",
        "UPDATE t SET n = '3' WHERE id = 4", // text vs integer
        "DELETE FROM kv WHERE k = 'c'",
        "CREATE INDEX t_score ON t(score)",
        "PRAGMA user_version = 8",
    ]
    .iter()
    .enumerate()
    {
        let other = dir.path().join(format!("other{i}.db"));
        make_db(&other, Some(extra));
        assert_ne!(support::dump(&other), base_dump, "dump missed: {extra}");
    }
}

#[test]
fn dump_sees_uncheckpointed_wal_of_open_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("live.db");
    let conn = support::open_wal_db(&path);
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);")
        .expect("write");
    assert!(dir.path().join("live.db-wal").exists());
    let d = support::dump(&path);
    assert_eq!(
        d.iter().filter(|l| l.starts_with("row ")).count(),
        2,
        "{d:#?}"
    );
}

#[test]
fn proc_signals_and_run() {
    let mut p = support::Proc::spawn("sleep", {
        let mut c = Command::new("sh");
        c.args([
            "-c",
            "echo started >&2; trap 'echo got-term >&2; exit 3' TERM; while :; do sleep 0.05; done",
        ]);
        c
    });
    assert!(support::wait_until(Duration::from_secs(10), || p
        .stderr()
        .contains("started")));
    assert!(p.wait_timeout(Duration::from_millis(100)).is_none());
    let st = p.stop(SIGTERM, Duration::from_secs(10));
    assert_eq!(st.code(), Some(3), "{}", p.output_report());
    assert!(p.stderr().contains("got-term"));

    let mut q = support::Proc::spawn("sleep2", {
        let mut c = Command::new("sleep");
        c.arg("30");
        c
    });
    let st = q.stop(SIGINT, Duration::from_secs(10));
    assert!(!st.success());
    let mut r = support::Proc::spawn("sleep3", {
        let mut c = Command::new("sleep");
        c.arg("30");
        c
    });
    r.signal(SIGKILL);
    assert!(r.wait_timeout(Duration::from_secs(10)).is_some());
    // Dropping a running process kills it.
    drop(support::Proc::spawn("sleep4", {
        let mut c = Command::new("sleep");
        c.arg("30");
        c
    }));

    let out = support::run(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 5"]));
    assert_eq!(out.code(), Some(5));
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
}

#[test]
fn binaries_are_located() {
    assert!(support::replica_bin().is_file());
    // Only checked when the oracle has been provided; the interop tests
    // themselves call litestream_bin() and fail loudly without it.
    if std::env::var_os("REPLICA_LITESTREAM_BIN").is_some() {
        let out = support::run(support::litestream_cmd().arg("version"));
        assert!(out.success(), "{out}");
        assert_eq!(out.stdout.trim(), support::LITESTREAM_VERSION);
    }
}
