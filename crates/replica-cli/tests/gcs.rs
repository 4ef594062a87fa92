//! End to end on the GCS emulator (fake-gcs-server, started by `cargo xtask test`):
//! `replica` replicates to `gs://…?endpoint=…`, and both `replica restore` and
//! Litestream 0.5.17 (with `STORAGE_EMULATOR_HOST`, reading the `ltx/<level>/` layout)
//! restore the same content; and the reverse direction.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{
    Proc, SIGINT, assert_restored, litestream_cmd, new_db, replica_cmd, run, user_dump, wait_until,
    write_batches,
};
use tempfile::TempDir;

const TIMEOUT: Duration = Duration::from_secs(30);

struct Gcs {
    endpoint: String,
    bucket: String,
}

impl Gcs {
    /// The emulator from the environment and a fresh bucket on it.
    fn new() -> Gcs {
        let endpoint = std::env::var("REPLICA_GCS_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| {
                panic!(
                    "REPLICA_GCS_ENDPOINT is not set: run `cargo xtask test` (it starts \
                     fake-gcs-server)"
                )
            });
        let gcs = Gcs {
            endpoint,
            bucket: format!("e2e-{:016x}", rand::random::<u64>()),
        };
        gcs.create_bucket();
        gcs
    }

    /// The emulator is anonymous: a plain JSON API insert creates the bucket.
    fn create_bucket(&self) {
        let hostport = self
            .endpoint
            .strip_prefix("http://")
            .expect("the emulator endpoint is http://")
            .trim_end_matches('/');
        let body = format!("{{\"name\":\"{}\"}}", self.bucket);
        let mut conn = TcpStream::connect(hostport).expect("connecting to the GCS emulator");
        write!(
            conn,
            "POST /storage/v1/b?project=test HTTP/1.1\r\nHost: {hostport}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("sending buckets.insert");
        let mut resp = String::new();
        conn.read_to_string(&mut resp)
            .expect("reading buckets.insert");
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "buckets.insert failed: {resp}"
        );
    }

    fn url(&self, path: &str) -> String {
        format!("gs://{}/{path}?endpoint={}", self.bucket, self.endpoint)
    }

    /// Litestream reads the emulator from STORAGE_EMULATOR_HOST; `replica` gets it in
    /// the URL, and must not depend on the variable.
    fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("STORAGE_EMULATOR_HOST", &self.endpoint)
            .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
    }

    /// A Litestream config for one database replicated to `path` in the bucket.
    fn litestream_config(&self, dir: &Path, db: &Path, path: &str) -> PathBuf {
        let cfg = dir.join("litestream.yml");
        std::fs::write(
            &cfg,
            format!(
                "dbs:\n  - path: {}\n    replica:\n      type: gs\n      bucket: {}\n      path: {path}\n",
                db.display(),
                self.bucket,
            ),
        )
        .expect("writing litestream.yml");
        cfg
    }
}

#[test]
fn replica_writes_gcs_and_both_tools_restore_it() {
    let gcs = Gcs::new();
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = new_db(&db);
    write_batches(&conn, 3, 50);
    let url = gcs.url("prod/app");

    let mut cmd = replica_cmd();
    cmd.args(["replicate", "--sync-interval", "100ms"])
        .arg(&db)
        .arg(&url)
        .env_remove("STORAGE_EMULATOR_HOST");
    let mut rep = Proc::spawn("replica replicate gs", cmd);
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
    let source = user_dump(&db);

    let ours = dir.path().join("ours.db");
    let mut cmd = replica_cmd();
    let o = run(cmd
        .args(["restore", "-o"])
        .arg(&ours)
        .arg(&url)
        .env_remove("STORAGE_EMULATOR_HOST"));
    assert!(o.success(), "replica restore from GCS failed\n{o}");
    assert_restored("replica restore", &ours, &source);

    // gcs:// is the same replica as gs://.
    let ours2 = dir.path().join("ours2.db");
    let mut cmd = replica_cmd();
    let alias = url.replacen("gs://", "gcs://", 1);
    let o = run(gcs.env(cmd.args(["restore", "-o"]).arg(&ours2).arg(&alias)));
    assert!(o.success(), "replica restore from gcs:// failed\n{o}");
    assert_restored("replica restore (gcs://)", &ours2, &source);

    // Litestream finds our files in the gs layout (`prod/app/ltx/9/…`, `…/ltx/0/…`).
    let theirs = dir.path().join("theirs.db");
    let cfg = gcs.litestream_config(dir.path(), &db, "prod/app");
    let mut cmd = litestream_cmd();
    let o = run(gcs.env(
        cmd.args(["restore", "-config"])
            .arg(&cfg)
            .arg("-o")
            .arg(&theirs)
            .arg(&db),
    ));
    assert!(o.success(), "litestream restore from GCS failed\n{o}");
    assert_restored("litestream restore", &theirs, &source);
}

#[test]
fn litestream_writes_gcs_and_replica_restores_it() {
    let gcs = Gcs::new();
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = new_db(&db);
    write_batches(&conn, 3, 50);
    let cfg = gcs.litestream_config(dir.path(), &db, "ls/app");
    let mut cmd = litestream_cmd();
    gcs.env(cmd.args(["replicate", "-config"]).arg(&cfg));
    let mut ls = Proc::spawn("litestream replicate gs", cmd);
    write_batches(&conn, 20, 40);
    let expected = user_dump(&db);
    let url = gcs.url("ls/app");
    let out = dir.path().join("probe.db");
    // Litestream syncs every second; wait until a restore shows everything.
    let caught_up = wait_until(TIMEOUT, || {
        let _ = std::fs::remove_file(&out);
        let mut cmd = replica_cmd();
        let o = run(cmd.args(["-q", "restore", "-o"]).arg(&out).arg(&url));
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
