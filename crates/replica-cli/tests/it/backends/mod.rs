//! End to end on every remote store (S3, Azure Blob Storage, GCS, SFTP), against the
//! emulators that `cargo xtask test` starts. The scenarios are written once, over a
//! [`StoreFixture`] per store:
//! - `replica` writes, and both `replica restore` and Litestream 0.5.17 (reading the
//!   store's own layout) restore the same content;
//! - Litestream writes and `replica restore` reads it;
//! - a failing run never prints the store's secret ([`SecretFixture`]).
//!
//! What only one store has (the `gcs://` alias, …) is tested in its own module.

mod abs;
mod gcs;
pub mod s3;
mod seaweedfs;
mod sftp;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::support::{
    FaultyLink, HttpLink, Proc, SIGINT, integrity_ok, litestream_cmd, new_db, parse_ltx_json,
    replica_cmd, run, user_dump, wait_until, write_batches,
};

const TIMEOUT: Duration = Duration::from_secs(30);

/// One store on its emulator, with a fresh bucket (container, directory) of its own.
pub trait StoreFixture {
    /// The scheme, for messages and process names.
    fn scheme(&self) -> &'static str;

    /// The replica URL of `path` in this fixture's bucket.
    fn url(&self, path: &str) -> String;

    /// Sets what both tools need to reach the store (credentials) and removes what
    /// could make `replica` reach it by another way than its URL.
    fn creds(&self, cmd: &mut Command);

    /// Sets what only Litestream needs (applied after [`StoreFixture::creds`]).
    fn litestream_env(&self, _cmd: &mut Command) {}

    /// The `replica:` block of a `litestream.yml` for the replica at `path`, indented
    /// by six spaces.
    fn litestream_replica(&self, path: &str) -> String;

    /// How every key that `replica ltx` lists begins in this store's layout (the
    /// layout Litestream reads).
    fn key_prefix(&self) -> &'static str;
}

/// A store behind a server, whose link a test can break.
pub trait RemoteFixture: StoreFixture {
    /// The store server's `host:port`, as [`StoreFixture::url`] names it.
    fn upstream(&self) -> String;

    /// A proxy in front of the store that a test can break: HTTP unless the store
    /// speaks something else.
    fn faulty_link(&self) -> Box<dyn FaultyLink> {
        Box::new(HttpLink::start(&self.upstream()))
    }
}

/// `host:port` of an `http://host:port/…` endpoint.
fn host_port(endpoint: &str) -> String {
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

/// A store whose credential is a secret that must never appear in any output.
pub trait SecretFixture: StoreFixture {
    /// A well-formed secret for this store that the store refuses (or that cannot
    /// matter, where the store fails first), distinctive enough to find in output.
    fn marker(&self) -> String;

    /// Passes `secret` as the credential, the way users do.
    fn with_secret(&self, cmd: &mut Command, secret: &str);

    /// A URL on the live emulator that a run with [`SecretFixture::marker`] fails on.
    fn refused_url(&self, path: &str) -> String;

    /// A URL of this scheme whose endpoint is a closed port.
    fn unreachable_url(&self, path: &str) -> String;
}

/// Writes `litestream.yml` for one database replicated to `path` in the fixture's store.
pub fn litestream_config(
    f: &dyn StoreFixture,
    dir: &Path,
    db: &Path,
    path: &str,
) -> std::path::PathBuf {
    let cfg = dir.join("litestream.yml");
    std::fs::write(
        &cfg,
        format!(
            "dbs:\n  - path: {}\n    replica:\n{}",
            db.display(),
            f.litestream_replica(path)
        ),
    )
    .expect("writing litestream.yml");
    cfg
}

fn replica(f: &dyn StoreFixture) -> Command {
    let mut cmd = replica_cmd();
    f.creds(&mut cmd);
    cmd
}

fn litestream(f: &dyn StoreFixture) -> Command {
    let mut cmd = litestream_cmd();
    f.creds(&mut cmd);
    f.litestream_env(&mut cmd);
    cmd
}

#[track_caller]
fn assert_restored(what: &str, out: &Path, expected: &[String]) {
    assert!(integrity_ok(out), "{what}: integrity_check failed");
    assert_eq!(
        user_dump(out),
        expected,
        "{what}: content differs from the source"
    );
}

/// Replicates a database with `replica` to `url` while writing (a VACUUM included),
/// stops it cleanly and returns the source's content.
fn replicate_a_workload(f: &dyn StoreFixture, db: &Path, url: &str) -> Vec<String> {
    let conn = new_db(db);
    write_batches(&conn, 3, 50);
    let mut cmd = replica(f);
    cmd.args(["replicate", "--sync-interval", "100ms"])
        .arg(db)
        .arg(url);
    let mut rep = Proc::spawn(&format!("replica replicate {}", f.scheme()), cmd);
    // Replication has started once the first snapshot is in the store. A store that
    // answers its first requests with errors (SeaweedFS sometimes says 500 at first)
    // only delays that; a SIGINT before it would stop a start, not a replication.
    let started = || {
        let out = run(replica(f).args(["ltx", "--json", url]));
        out.success() && !parse_ltx_json(&out).is_empty()
    };
    assert!(
        wait_until(TIMEOUT, started),
        "replication never started\n{}",
        rep.output_report()
    );
    write_batches(&conn, 20, 40);
    conn.execute_batch("VACUUM").expect("vacuum");
    write_batches(&conn, 5, 10);
    let st = rep.stop(SIGINT, TIMEOUT);
    assert_eq!(
        st.code(),
        Some(0),
        "replicate exited with {st}\n{}",
        rep.output_report()
    );
    drop(conn);
    user_dump(db)
}

/// `replica restore -o OUT URL` with the fixture's credentials; must succeed with the
/// `expected` content.
#[track_caller]
fn assert_replica_restores(f: &dyn StoreFixture, url: &str, out: &Path, expected: &[String]) {
    let o = run(replica(f).args(["restore", "-o"]).arg(out).arg(url));
    assert!(o.success(), "replica restore from {url} failed\n{o}");
    assert_restored(&format!("replica restore from {url}"), out, expected);
}

/// Scenario: `replica` writes; `replica restore` and `litestream restore` give the
/// source's content, and `replica ltx` lists the snapshot and L0 files in the store's
/// layout.
pub fn replica_writes_and_both_tools_restore(f: &dyn StoreFixture) {
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    let url = f.url("prod/app");
    let source = replicate_a_workload(f, &db, &url);

    assert_replica_restores(f, &url, &dir.path().join("ours.db"), &source);

    let theirs = dir.path().join("theirs.db");
    let cfg = litestream_config(f, dir.path(), &db, "prod/app");
    let o = run(litestream(f)
        .args(["restore", "-config"])
        .arg(&cfg)
        .arg("-o")
        .arg(&theirs)
        .arg(&db));
    assert!(
        o.success(),
        "litestream restore from {} failed\n{o}",
        f.scheme()
    );
    assert_restored("litestream restore", &theirs, &source);

    // `replica ltx` sees the same files and their persisted times (HEAD per file).
    let o = run(replica(f).args(["ltx", "--json"]).arg(&url));
    assert!(o.success(), "replica ltx failed\n{o}");
    let files = parse_ltx_json(&o);
    assert!(
        files.iter().any(|r| r.level == 9),
        "no snapshot listed: {files:?}"
    );
    assert!(
        files.iter().any(|r| r.level == 0),
        "no L0 listed: {files:?}"
    );
    let prefix = f.key_prefix();
    assert!(
        files.iter().all(|r| r.key.starts_with(prefix)),
        "keys outside the {} layout ({prefix}…): {files:?}",
        f.scheme()
    );
}

/// Scenario: Litestream writes; `replica restore` catches up with the source.
pub fn litestream_writes_and_replica_restores(f: &dyn StoreFixture) {
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = new_db(&db);
    write_batches(&conn, 3, 50);
    let cfg = litestream_config(f, dir.path(), &db, "ls/app");
    let mut cmd = litestream(f);
    cmd.args(["replicate", "-config"]).arg(&cfg);
    let mut ls = Proc::spawn(&format!("litestream replicate {}", f.scheme()), cmd);
    write_batches(&conn, 20, 40);
    let expected = user_dump(&db);
    let url = f.url("ls/app");
    let out = dir.path().join("probe.db");
    // Litestream syncs every second; wait until a restore shows everything.
    let caught_up = wait_until(TIMEOUT, || {
        let _ = std::fs::remove_file(&out);
        let o = run(replica(f).args(["-q", "restore", "-o"]).arg(&out).arg(&url));
        o.success() && user_dump(&out) == expected
    });
    let st = ls.stop(SIGINT, TIMEOUT);
    assert!(
        caught_up,
        "replica restore never matched the source\n{}",
        ls.output_report()
    );
    assert_eq!(st.code(), Some(0), "litestream exited with {st}");
    assert_restored("replica restore of a Litestream replica", &out, &expected);
}

/// Scenario: runs that fail (store unreachable, secret refused), with every log level
/// on, exit 1 with an error message that does not hold the secret.
pub fn secret_never_appears_in_output_of_failing_runs(f: &dyn SecretFixture) {
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    drop(new_db(&db));
    let marker = f.marker();
    let path = |p: &Path| p.display().to_string();
    let runs = [
        (
            "replicate to a closed port",
            // The lease is retried for --lease-wait while the store does not answer.
            vec![
                "replicate".to_owned(),
                "--lease-wait".into(),
                "3s".into(),
                path(&db),
                f.unreachable_url("x"),
            ],
        ),
        (
            "restore from a closed port",
            vec![
                "restore".to_owned(),
                "-o".into(),
                path(&dir.path().join("out1.db")),
                f.unreachable_url("x"),
            ],
        ),
        (
            "restore refused by the store",
            vec![
                "restore".to_owned(),
                "-o".into(),
                path(&dir.path().join("out2.db")),
                f.refused_url("x"),
            ],
        ),
    ];
    // At once: some stores' clients retry a closed port for over a minute.
    let mut procs: Vec<(&str, Proc)> = runs
        .into_iter()
        .map(|(what, args)| {
            let mut cmd = replica_cmd();
            f.with_secret(&mut cmd, &marker);
            cmd.arg("-vv").args(&args).env("REPLICA_LOG", "trace");
            (what, Proc::spawn(what, cmd))
        })
        .collect();
    for (what, p) in &mut procs {
        // A run that retried forever would hang the test: bound it.
        let st = p.wait_timeout(Duration::from_secs(180));
        let (stdout, stderr) = (p.stdout(), p.stderr());
        assert!(
            st.is_some(),
            "{what}: still running after 180 s\n{}",
            p.output_report()
        );
        assert!(
            !stderr.contains(&marker) && !stdout.contains(&marker),
            "{what}: the secret appears in the output"
        );
        assert_eq!(
            st.and_then(|s| s.code()),
            Some(1),
            "{what}: expected a runtime failure\n{}",
            p.output_report()
        );
        assert!(!stderr.is_empty(), "{what}: no error message");
    }
}

/// One `#[test]` per scenario for a fixture: `scenarios!(Fixture::new(); name, …)`.
pub use crate::faults::replication_survives_faults_and_an_outage;
pub use crate::lease::rolling_deploy_hands_over_without_loss;

macro_rules! scenarios {
    ($fixture:expr; $($scenario:ident),+ $(,)?) => {
        $(
            #[test]
            fn $scenario() {
                super::$scenario(&$fixture);
            }
        )+
    };
}
use scenarios;
