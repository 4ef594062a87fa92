//! End to end over SFTP (OpenSSH sshd, started by `cargo xtask test`): `replica`
//! replicates to `sftp://…`, and both `replica restore` and Litestream 0.5.17 restore
//! the same content; and the reverse direction.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{
    Proc, SIGINT, assert_restored, litestream_cmd, new_db, replica_cmd, run, user_dump, wait_until,
    write_batches,
};
use tempfile::TempDir;

const TIMEOUT: Duration = Duration::from_secs(30);

struct Sftp {
    host: String,
    port: u16,
    user: String,
    key: PathBuf,
    root: String,
    host_key: String,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `cargo xtask test` (it starts sshd for the sftp tests)")
    })
}

fn enc(s: &str) -> String {
    s.replace('%', "%25")
        .replace(' ', "%20")
        .replace('&', "%26")
}

impl Sftp {
    fn new() -> Sftp {
        let key = PathBuf::from(var("REPLICA_SFTP_KEY"));
        let host_key_file = std::env::var("REPLICA_SFTP_HOST_KEY")
            .map(PathBuf::from)
            .unwrap_or_else(|_| key.with_file_name("host_ed25519.pub"));
        let host_key = std::fs::read_to_string(&host_key_file).expect("reading the host key");
        Sftp {
            host: var("REPLICA_SFTP_HOST"),
            port: var("REPLICA_SFTP_PORT").parse().expect("REPLICA_SFTP_PORT"),
            user: var("REPLICA_SFTP_USER"),
            key,
            root: format!(
                "{}/e2e-{:016x}",
                var("REPLICA_SFTP_ROOT"),
                rand::random::<u64>()
            ),
            host_key: host_key
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    fn path(&self, sub: &str) -> String {
        format!("{}/{sub}", self.root)
    }

    fn url(&self, sub: &str) -> String {
        format!(
            "sftp://{}@{}:{}{}?key_path={}&host_key={}",
            self.user,
            self.host,
            self.port,
            self.path(sub),
            enc(&self.key.display().to_string()),
            enc(&self.host_key)
        )
    }

    fn litestream_config(&self, dir: &Path, db: &Path, sub: &str) -> PathBuf {
        let cfg = dir.join("litestream.yml");
        std::fs::write(
            &cfg,
            format!(
                "dbs:\n  - path: {}\n    replica:\n      type: sftp\n      host: \"{}:{}\"\n      user: {}\n      key-path: {}\n      path: {}\n",
                db.display(),
                self.host,
                self.port,
                self.user,
                self.key.display(),
                self.path(sub)
            ),
        )
        .expect("writing litestream.yml");
        cfg
    }
}

#[test]
fn replica_writes_sftp_and_both_tools_restore_it() {
    let sftp = Sftp::new();
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = new_db(&db);
    write_batches(&conn, 3, 50);
    let url = sftp.url("prod/app");

    let mut cmd = replica_cmd();
    cmd.args(["replicate", "--sync-interval", "100ms"])
        .arg(&db)
        .arg(&url);
    let mut rep = Proc::spawn("replica replicate sftp", cmd);
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
    let o = run(replica_cmd().args(["restore", "-o"]).arg(&ours).arg(&url));
    assert!(o.success(), "replica restore from SFTP failed\n{o}");
    assert_restored("replica restore", &ours, &source);

    let theirs = dir.path().join("theirs.db");
    let cfg = sftp.litestream_config(dir.path(), &db, "prod/app");
    let o = run(litestream_cmd()
        .args(["restore", "-config"])
        .arg(&cfg)
        .arg("-o")
        .arg(&theirs)
        .arg(&db));
    assert!(o.success(), "litestream restore from SFTP failed\n{o}");
    assert_restored("litestream restore", &theirs, &source);
}

#[test]
fn litestream_writes_sftp_and_replica_restores_it() {
    let sftp = Sftp::new();
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = new_db(&db);
    write_batches(&conn, 3, 50);
    let cfg = sftp.litestream_config(dir.path(), &db, "ls/app");
    let mut cmd = litestream_cmd();
    cmd.args(["replicate", "-config"]).arg(&cfg);
    let mut ls = Proc::spawn("litestream replicate sftp", cmd);
    write_batches(&conn, 20, 40);
    let expected = user_dump(&db);
    let url = sftp.url("ls/app");
    let out = dir.path().join("probe.db");
    let caught_up = wait_until(TIMEOUT, || {
        let _ = std::fs::remove_file(&out);
        let o = run(replica_cmd()
            .args(["-q", "restore", "-o"])
            .arg(&out)
            .arg(&url));
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
