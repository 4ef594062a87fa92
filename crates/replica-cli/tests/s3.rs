//! End to end on the S3 emulator (moto, started by `cargo xtask test`): `replica`
//! replicates to `s3://…?endpoint=…`, and both `replica restore` and Litestream 0.5.17
//! (which reads the S3 `%04x` level layout) restore the same content; the reverse
//! direction too; and a failing run never prints the secret key.

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

struct S3 {
    endpoint: String,
    key: String,
    secret: String,
    bucket: String,
}

impl S3 {
    /// The emulator from the environment and a fresh bucket on it.
    fn new() -> S3 {
        let endpoint = std::env::var("REPLICA_S3_ENDPOINT").unwrap_or_else(|_| {
            panic!(
                "REPLICA_S3_ENDPOINT is not set: run `cargo xtask test` (it starts the S3 emulator)"
            )
        });
        let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
        let s3 = S3 {
            endpoint,
            key: env("REPLICA_S3_ACCESS_KEY_ID", "test"),
            secret: env("REPLICA_S3_SECRET_ACCESS_KEY", "test"),
            bucket: format!("e2e-{:016x}", rand::random::<u64>()),
        };
        s3.create_bucket();
        s3
    }

    /// moto does not check signatures, so a plain PUT creates the bucket.
    fn create_bucket(&self) {
        let hostport = self
            .endpoint
            .strip_prefix("http://")
            .expect("the emulator endpoint is http://");
        let mut conn = TcpStream::connect(hostport).expect("connecting to the S3 emulator");
        write!(
            conn,
            "PUT /{} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.bucket
        )
        .expect("sending CreateBucket");
        let mut resp = String::new();
        conn.read_to_string(&mut resp)
            .expect("reading CreateBucket");
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "CreateBucket failed: {resp}"
        );
    }

    fn url(&self, path: &str) -> String {
        format!(
            "s3://{}/{path}?endpoint={}&region=us-east-1&force_path_style=true",
            self.bucket, self.endpoint
        )
    }

    fn with_credentials<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("AWS_ACCESS_KEY_ID", &self.key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
    }

    /// A Litestream config for one database replicated to `path` in the bucket.
    fn litestream_config(&self, dir: &Path, db: &Path, path: &str) -> PathBuf {
        let cfg = dir.join("litestream.yml");
        std::fs::write(
            &cfg,
            format!(
                "dbs:\n  - path: {}\n    replica:\n      type: s3\n      bucket: {}\n      path: {path}\n      endpoint: {}\n      region: us-east-1\n      force-path-style: true\n",
                db.display(),
                self.bucket,
                self.endpoint
            ),
        )
        .expect("writing litestream.yml");
        cfg
    }
}

#[test]
fn replica_writes_s3_and_both_tools_restore_it() {
    let s3 = S3::new();
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = new_db(&db);
    write_batches(&conn, 3, 50);
    let url = s3.url("prod/app");

    let mut cmd = replica_cmd();
    s3.with_credentials(
        cmd.args(["replicate", "--sync-interval", "100ms"])
            .arg(&db)
            .arg(&url),
    );
    let mut rep = Proc::spawn("replica replicate s3", cmd);
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
    let o = run(s3.with_credentials(cmd.args(["restore", "-o"]).arg(&ours).arg(&url)));
    assert!(o.success(), "replica restore from S3 failed\n{o}");
    assert_restored("replica restore", &ours, &source);

    // Litestream finds our files in the S3 layout (`prod/app/0009/…`, `prod/app/0000/…`).
    let theirs = dir.path().join("theirs.db");
    let cfg = s3.litestream_config(dir.path(), &db, "prod/app");
    let mut cmd = litestream_cmd();
    let o = run(s3.with_credentials(
        cmd.args(["restore", "-config"])
            .arg(&cfg)
            .arg("-o")
            .arg(&theirs)
            .arg(&db),
    ));
    assert!(o.success(), "litestream restore from S3 failed\n{o}");
    assert_restored("litestream restore", &theirs, &source);

    // `replica ltx` sees the same files and their persisted times (HEAD per file).
    let mut cmd = replica_cmd();
    let o = run(s3.with_credentials(cmd.args(["ltx", "--json"]).arg(&url)));
    assert!(o.success(), "replica ltx failed\n{o}");
    let rows: serde_json::Value = serde_json::from_str(&o.stdout).expect("ltx --json");
    let rows = rows.as_array().expect("array");
    assert!(
        rows.iter().any(|r| r["level"] == 9),
        "no snapshot listed: {rows:?}"
    );
    assert!(
        rows.iter().any(|r| r["level"] == 0),
        "no L0 listed: {rows:?}"
    );
    assert!(
        rows.iter()
            .all(|r| r["key"].as_str().is_some_and(|k| k.starts_with("000")))
    );
}

#[test]
fn litestream_writes_s3_and_replica_restores_it() {
    let s3 = S3::new();
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = new_db(&db);
    write_batches(&conn, 3, 50);
    let cfg = s3.litestream_config(dir.path(), &db, "ls/app");
    let mut cmd = litestream_cmd();
    s3.with_credentials(cmd.args(["replicate", "-config"]).arg(&cfg));
    let mut ls = Proc::spawn("litestream replicate s3", cmd);
    write_batches(&conn, 20, 40);
    let expected = user_dump(&db);
    let url = s3.url("ls/app");
    let out = dir.path().join("probe.db");
    // Litestream syncs every second; wait until a restore shows everything.
    let caught_up = wait_until(TIMEOUT, || {
        let _ = std::fs::remove_file(&out);
        let mut cmd = replica_cmd();
        let o = run(s3.with_credentials(cmd.args(["-q", "restore", "-o"]).arg(&out).arg(&url)));
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

#[test]
fn secrets_never_appear_in_output_of_failing_runs() {
    let s3 = S3::new();
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    drop(new_db(&db));
    let marker = format!("SECRETMARKER{:016x}", rand::random::<u64>());
    let runs = [
        // Nothing listens on port 9: every request fails after retries.
        (
            "replicate to a closed port",
            vec![
                "-vv".to_owned(),
                "replicate".into(),
                db.display().to_string(),
                "s3://bucket/x?endpoint=http://127.0.0.1:9&region=us-east-1".into(),
            ],
        ),
        (
            "restore from a missing bucket",
            vec![
                "-vv".to_owned(),
                "restore".into(),
                "-o".into(),
                dir.path().join("out.db").display().to_string(),
                format!(
                    "s3://no-such-bucket-{:x}/x?endpoint={}&region=us-east-1",
                    rand::random::<u32>(),
                    s3.endpoint
                ),
            ],
        ),
    ];
    for (what, args) in runs {
        let o = run(replica_cmd()
            .args(&args)
            .env("AWS_ACCESS_KEY_ID", "AKIDTESTKEY")
            .env("AWS_SECRET_ACCESS_KEY", &marker)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("REPLICA_LOG", "trace"));
        assert_eq!(o.code(), Some(1), "{what}: expected a runtime failure\n{o}");
        assert!(
            !o.stderr.contains(&marker) && !o.stdout.contains(&marker),
            "{what}: the secret key appears in the output"
        );
        assert!(!o.stderr.is_empty(), "{what}: no error message");
    }
}
