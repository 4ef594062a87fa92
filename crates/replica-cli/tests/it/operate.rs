//! What an operator sees: `/metrics` follows replication through an outage (lag rises
//! while the store is unreachable and falls after), `/readyz` turns ready only after
//! the boot restore, and `replica status` reports the same positions from the running
//! process and, once it has stopped, from the spool and the replica.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tempfile::TempDir;

use crate::backends::StoreFixture;
use crate::backends::s3::S3;
use crate::support::{
    FaultPlan, FaultProxy, Output, Proc, SIGINT, file_url, new_db, replica_cmd, run, user_dump,
    wait_until, write_batches,
};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A port nothing listens on now.
pub(crate) fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// A heartbeat receiver: counts the GETs it answers.
struct Pings {
    addr: String,
    count: Arc<AtomicUsize>,
}

impl Pings {
    fn start() -> Pings {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let count = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&count);
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let mut s = s;
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                if buf[..n].starts_with(b"GET /ping-token") {
                    c.fetch_add(1, Ordering::SeqCst);
                }
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Pings { addr, count }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

/// `replica replicate --once EXTRA… DB URL`, which must exit 0.
#[track_caller]
fn replicate_once(db: &Path, url: &str, extra: &[&str]) -> Output {
    let out = run(replica_cmd()
        .args(["replicate", "--once"])
        .args(extra)
        .arg(db)
        .arg(url));
    assert_eq!(out.code(), Some(0), "{out}");
    out
}

/// The user tables of the latest state of `url`, restored into `out`.
#[track_caller]
fn restored_user_dump(url: &str, out: &Path) -> Vec<String> {
    let r = run(replica_cmd().args(["restore", "-o"]).arg(out).arg(url));
    assert!(r.success(), "{r}");
    user_dump(out)
}

/// `GET path` on `addr`: the status code and the body, or `None` if nothing answers.
pub(crate) fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.get(9..12)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

/// Waits until the process at `addr` answers `/readyz` with 200.
#[track_caller]
pub(crate) fn until_ready(addr: &str, p: &Proc) {
    assert!(
        wait_until(TIMEOUT, || get(addr, "/readyz")
            .is_some_and(|(c, _)| c == 200)),
        "never ready\n{}",
        p.output_report()
    );
}

/// The value of one sample of `/metrics`: `name{db="…"…}` for the database `db`.
pub(crate) fn metric(addr: &str, name: &str, db: &Path, extra: &str) -> Option<f64> {
    let (code, body) = get(addr, "/metrics")?;
    assert_eq!(code, 200, "{body}");
    let label = format!("db=\"{}\"", db.display());
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| l.contains(&label) && l.contains(extra))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

fn status_json(cmd: &mut Command) -> serde_json::Value {
    let out = run(cmd);
    assert!(out.success(), "status failed:\n{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

#[test]
fn metrics_show_lag_rising_in_an_outage_and_falling_after() {
    let s3 = S3::new();
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = new_db(&db);
    let upstream = s3
        .endpoint()
        .strip_prefix("http://")
        .expect("http endpoint");
    let proxy = FaultProxy::start(upstream, FaultPlan::HEALTHY);
    let url = s3
        .url("ops/app")
        .replace(s3.endpoint(), &format!("http://{}", proxy.addr));
    let addr = free_addr();
    let pings = Pings::start();
    let ping_url = format!("http://{}/ping-token", pings.addr);
    let mut cmd = replica_cmd();
    s3.creds(&mut cmd);
    cmd.args([
        "replicate",
        "--sync-interval",
        "200ms",
        "--metrics-addr",
        &addr,
    ])
    .args([
        "--heartbeat-url",
        &ping_url,
        "--heartbeat-interval",
        "100ms",
    ])
    .arg(&db)
    .arg(&url);
    let mut rep = Proc::spawn("replicate with metrics", cmd);

    let m = |name: &str| metric(&addr, name, &db, "");
    until_ready(&addr, &rep);
    assert_eq!(get(&addr, "/healthz").map(|(c, _)| c), Some(200));
    write_batches(&conn, 5, 20);
    let in_sync = || {
        let (l, r) = (m("replica_local_txid"), m("replica_remote_txid"));
        l.is_some() && l == r && m("replica_lag_seconds") == Some(0.0)
    };
    assert!(
        wait_until(TIMEOUT, in_sync),
        "not in sync\n{}",
        rep.output_report()
    );
    assert!(
        wait_until(TIMEOUT, || pings.count() >= 2),
        "no heartbeat\n{}",
        rep.output_report()
    );
    let uploads = m("replica_uploads_total").expect("uploads counter");
    assert!(uploads >= 1.0, "uploads {uploads}");
    assert!(m("replica_store_requests_total").is_some());
    assert!(
        get(&addr, "/metrics")
            .is_some_and(|(_, b)| b.contains("replica_upload_duration_seconds_bucket"))
    );

    // The store disappears: commits go on, the lag grows, the spool holds them.
    proxy.set_plan(FaultPlan::OUTAGE);
    write_batches(&conn, 5, 20);
    let lagging = || {
        m("replica_lag_seconds").is_some_and(|l| l >= 2.0)
            && metric(&addr, "replica_state", &db, "state=\"failing\"") == Some(1.0)
            && m("replica_spool_files").is_some_and(|n| n >= 1.0)
    };
    assert!(
        wait_until(TIMEOUT, lagging),
        "lag did not rise\n{}",
        rep.output_report()
    );
    let (local, remote) = (m("replica_local_txid"), m("replica_remote_txid"));
    assert!(local > remote, "local {local:?} remote {remote:?}");
    // No heartbeat while a database is failing (one may have been in flight).
    let before = pings.count();
    std::thread::sleep(Duration::from_millis(800));
    assert!(pings.count() <= before + 1, "heartbeats during the outage");
    let during = pings.count();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pings.count(), during, "heartbeats during the outage");
    assert_eq!(
        get(&addr, "/readyz").map(|(c, _)| c),
        Some(200),
        "failing is not stopped"
    );

    // The store comes back: everything is uploaded and the lag falls to zero.
    proxy.set_plan(FaultPlan::HEALTHY);
    assert!(
        wait_until(TIMEOUT, in_sync),
        "did not catch up\n{}",
        rep.output_report()
    );
    assert!(m("replica_upload_errors_total").is_some_and(|n| n >= 1.0));
    // An unreachable store is a transient failure, and nothing else failed.
    assert!(
        metric(&addr, "replica_errors_total", &db, "kind=\"transient\"").is_some_and(|n| n >= 1.0)
    );
    assert_eq!(
        metric(
            &addr,
            "replica_errors_total",
            &db,
            "kind=\"permission_denied\""
        ),
        Some(0.0)
    );
    let after = pings.count();
    assert!(
        wait_until(TIMEOUT, || pings.count() > after),
        "heartbeat did not resume"
    );
    assert!(
        !rep.stderr().contains("ping-token"),
        "the heartbeat URL's token was logged"
    );

    // The running process answers `status` with the same positions.
    let mut cmd = replica_cmd();
    cmd.args(["status", "--json", "--addr", &addr]);
    let st = status_json(&mut cmd);
    let d = &st["databases"][0];
    assert_eq!(d["state"], "replicating", "{st}");
    assert_eq!(d["lease"], "held", "{st}");
    assert_eq!(
        metric(&addr, "replica_lease", &db, "state=\"held\""),
        Some(1.0)
    );
    assert_eq!(d["local_txid"], d["remote_txid"], "{st}");
    let local = format!("{:016x}", m("replica_local_txid").expect("txid") as u64);
    assert_eq!(d["local_txid"], local.as_str(), "{st}");

    let code = rep.stop(SIGINT, TIMEOUT);
    assert_eq!(code.code(), Some(0), "{}", rep.output_report());
    drop(conn);
    let out = dir.path().join("restored.db");
    let mut cmd = replica_cmd();
    s3.creds(&mut cmd);
    let r = run(cmd.args(["restore", "-o"]).arg(&out).arg(&url));
    assert!(r.success(), "{}", r.stderr);
    assert_eq!(user_dump(&out), user_dump(&db));
}

#[test]
fn readyz_waits_for_the_boot_restore_and_status_works_stopped_too() {
    let dir = TempDir::new().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    let store = dir.path().join("store");
    let db = data.join("shard_0.db");

    // A replica with enough data that restoring it takes a moment.
    let conn = new_db(&db);
    conn.execute_batch(
        "CREATE TABLE big(b BLOB); \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 4000) \
         INSERT INTO big SELECT randomblob(8000) FROM n;",
    )
    .expect("fill");
    write_batches(&conn, 3, 10);
    let url = format!("{}/shard_0", file_url(&store));
    let mut cmd = replica_cmd();
    cmd.args(["replicate", "--sync-interval", "100ms"])
        .arg(&db)
        .arg(&url);
    let mut rep = Proc::spawn("seed replica", cmd);
    assert!(wait_until(TIMEOUT, || run(
        replica_cmd().args(["ltx", &url])
    )
    .stdout
    .lines()
    .count()
        > 1));
    assert_eq!(
        rep.stop(SIGINT, TIMEOUT).code(),
        Some(0),
        "{}",
        rep.output_report()
    );
    drop(conn);
    let expected = user_dump(&db);
    for f in ["shard_0.db", "shard_0.db-wal", "shard_0.db-shm"] {
        let _ = std::fs::remove_file(data.join(f));
    }

    let addr = free_addr();
    let config = dir.path().join("replica.yml");
    std::fs::write(
        &config,
        format!(
            "replication:\n  enabled: true\n  replica_url: {}\n  restore_on_boot: true\n  \
             sync_interval: 100ms\n  metrics_addr: {addr}\nshards:\n  count: 1\n  path: ./data/shard_{{index}}.db\n",
            file_url(&store)
        ),
    )
    .expect("config");
    let mut cmd = replica_cmd();
    cmd.args(["replicate", "--config"]).arg(&config);
    let mut rep = Proc::spawn("replicate --config with boot restore", cmd);
    let mut saw_not_ready = false;
    let ready = wait_until(TIMEOUT, || match get(&addr, "/readyz") {
        Some((200, _)) => true,
        Some((503, body)) => {
            assert!(body.contains("not ready"), "{body}");
            saw_not_ready = true;
            false
        }
        _ => false,
    });
    assert!(ready, "never ready\n{}", rep.output_report());
    assert!(
        saw_not_ready,
        "/readyz said ready before the boot restore ended"
    );
    assert!(db.exists());

    let mut cmd = replica_cmd();
    cmd.args(["status", "--json", "--config"]).arg(&config);
    let running = status_json(&mut cmd);
    let d = &running["databases"][0];
    assert_eq!(d["state"], "replicating", "{running}");
    assert_eq!(running["ready"], true, "{running}");
    assert!(
        d["restorable_from"].is_string() && d["last_snapshot"].is_string(),
        "{running}"
    );

    assert_eq!(
        rep.stop(SIGINT, TIMEOUT).code(),
        Some(0),
        "{}",
        rep.output_report()
    );
    let stopped = status_json(&mut cmd);
    let s = &stopped["databases"][0];
    assert_eq!(s["state"], "not_running", "{stopped}");
    assert_eq!(s["remote_txid"], d["remote_txid"], "{stopped}");
    assert_eq!(s["local_txid"], s["remote_txid"], "{stopped}");
    assert_eq!(s["spool_files"], 0, "{stopped}");
    let text = run(replica_cmd().args(["status", "--config"]).arg(&config));
    assert!(
        text.success()
            && text.stdout.contains("not running")
            && text.stdout.contains("remote TXID"),
        "{}",
        text.stdout
    );
    assert_eq!(user_dump(&db), expected);
}

#[test]
fn config_and_positional_arguments_together_are_a_usage_error() {
    let dir = TempDir::new().expect("tempdir");
    let config = dir.path().join("replica.yml");
    std::fs::write(&config, "replication:\n  enabled: false\n").expect("config");
    for sub in ["replicate", "status"] {
        let out = run(replica_cmd()
            .args([sub, "--config"])
            .arg(&config)
            .arg(dir.path().join("db"))
            .arg(file_url(dir.path())));
        assert_eq!(out.code(), Some(2), "{sub}: {}", out.stderr);
        assert!(out.stderr.contains("not both"), "{sub}: {}", out.stderr);
    }
}

#[test]
fn once_uploads_everything_committed_and_exits_with_json_logs() {
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = new_db(&db);
    write_batches(&conn, 4, 25);
    let url = file_url(&dir.path().join("replica"));
    let out = replicate_once(&db, &url, &["--log-format", "json"]);
    let lines: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["message"] == "replicating"),
        "{}",
        out.stderr
    );
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("stopped"))),
        "{}",
        out.stderr
    );

    // Commits made after it exited are not in the replica; everything before is.
    let expected = user_dump(&db);
    write_batches(&conn, 1, 5);
    assert_eq!(
        restored_user_dump(&url, &dir.path().join("restored.db")),
        expected
    );
}

#[test]
fn completions_and_version_say_what_was_built() {
    let out = run(replica_cmd().args(["completions", "bash"]));
    assert!(
        out.success() && out.stdout.contains("replica") && out.stdout.contains("restore"),
        "{out}"
    );
    let v = run(replica_cmd().arg("version"));
    assert!(v.success(), "{v}");
    assert!(
        v.stdout.contains("commit ")
            && v.stdout.contains("backends: ")
            && v.stdout.contains("file"),
        "{v}"
    );
}

#[test]
fn common_mistakes_get_a_hint_and_the_right_exit_code() {
    let dir = TempDir::new().expect("tempdir");
    let bare = run(replica_cmd()
        .args(["ltx", "./backups/app"])
        .current_dir(dir.path()));
    assert_eq!(bare.code(), Some(2), "{bare}");
    let want = format!("file://{}/backups/app", dir.path().display());
    assert!(bare.stderr.contains(&want), "{bare}");

    let ts = run(replica_cmd()
        .args([
            "restore",
            "-o",
            "x.db",
            "--timestamp",
            "2026-11-24T07:18:55",
        ])
        .arg(file_url(dir.path())));
    assert_eq!(ts.code(), Some(2), "{ts}");
    assert!(ts.stderr.contains("append Z"), "{ts}");

    // No credentials anywhere: one short error saying what to set, no SDK dump.
    let mut cmd = replica_cmd();
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", dir.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args([
            "ltx",
            "s3://some-bucket/app?endpoint=http://127.0.0.1:9&region=us-east-1",
        ]);
    let creds = run(&mut cmd);
    assert_eq!(creds.code(), Some(1), "{creds}");
    assert!(creds.stderr.contains("AWS_ACCESS_KEY_ID"), "{creds}");
    assert!(
        creds.stderr.len() < 1500,
        "{} bytes:\n{creds}",
        creds.stderr.len()
    );
}

#[test]
fn verify_passes_a_good_replica_and_fails_a_damaged_one() {
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = new_db(&db);
    write_batches(&conn, 5, 20);
    let root = dir.path().join("replica");
    let url = file_url(&root);
    replicate_once(&db, &url, &[]);
    write_batches(&conn, 3, 20);
    replicate_once(&db, &url, &[]);
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("mkdir");

    let verify = |extra: &[&str]| {
        run(replica_cmd()
            .args(["verify", "--json", "--work-dir"])
            .arg(&work)
            .args(extra)
            .arg(&url))
    };
    let good = verify(&[]);
    assert_eq!(good.code(), Some(0), "{good}");
    let report: serde_json::Value = serde_json::from_str(&good.stdout).expect("JSON");
    assert_eq!(report["status"], "ok", "{report}");
    let max = crate::support::max_txid(&url);
    assert_eq!(
        report["txid"],
        crate::support::txid_hex(max).as_str(),
        "{report}"
    );
    assert!(
        crate::support::dir_listing(&work).is_empty(),
        "verify left files behind"
    );

    // One flipped byte in the newest L0 file: the latest state no longer restores.
    let l0 = root.join("ltx/0");
    let mut files: Vec<_> = std::fs::read_dir(&l0)
        .expect("ltx/0")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let newest = files.last().expect("an L0 file").clone();
    let mut bytes = std::fs::read(&newest).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&newest, &bytes).expect("write");
    let bad = verify(&[]);
    assert_eq!(bad.code(), Some(1), "{bad}");
    let report: serde_json::Value = serde_json::from_str(&bad.stdout).expect("JSON");
    assert_eq!(report["status"], "failure", "{report}");
    let name = newest
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        report["error"].as_str().is_some_and(|e| e.contains(&name)),
        "{report}"
    );
    assert!(
        crate::support::dir_listing(&work).is_empty(),
        "verify left files behind"
    );
    drop(conn);
}

#[test]
fn periodic_verify_is_exported_and_leaves_nothing_beside_the_database() {
    let dir = TempDir::new().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    let db = data.join("app.db");
    let conn = new_db(&db);
    write_batches(&conn, 3, 10);
    let url = file_url(&dir.path().join("replica"));
    let addr = free_addr();
    let mut cmd = replica_cmd();
    cmd.args([
        "replicate",
        "--sync-interval",
        "100ms",
        "--verify-interval",
        "300ms",
    ])
    .args(["--metrics-addr", &addr])
    .arg(&db)
    .arg(&url);
    let mut rep = Proc::spawn("replicate with periodic verify", cmd);
    let verified = || {
        metric(
            &addr,
            "replica_verify_last_success_timestamp_seconds",
            &db,
            "",
        )
        .is_some_and(|t| t > 1.7e9)
    };
    assert!(
        wait_until(TIMEOUT, verified),
        "no verify\n{}",
        rep.output_report()
    );
    assert_eq!(
        metric(&addr, "replica_verify_failures_total", &db, ""),
        Some(0.0)
    );
    assert_eq!(
        rep.stop(SIGINT, TIMEOUT).code(),
        Some(0),
        "{}",
        rep.output_report()
    );
    assert!(
        rep.stderr().contains("verify: the replica restores"),
        "{}",
        rep.output_report()
    );
    let left: Vec<String> = crate::support::dir_listing(&data)
        .into_iter()
        .filter(|n| n.starts_with(".replica-verify"))
        .collect();
    assert!(left.is_empty(), "verify left {left:?}");
    drop(conn);
}

#[test]
fn once_with_force_snapshot_leaves_a_new_snapshot_at_the_head() {
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = new_db(&db);
    write_batches(&conn, 3, 10);
    let url = file_url(&dir.path().join("replica"));
    replicate_once(&db, &url, &[]);
    write_batches(&conn, 2, 10);
    replicate_once(&db, &url, &[]);
    let snapshots = || {
        crate::support::ltx_list(&url)
            .iter()
            .filter(|f| f.level == 9)
            .map(|f| f.max)
            .collect::<Vec<_>>()
    };
    assert_eq!(snapshots().len(), 1, "a plain --once takes no new snapshot");
    write_batches(&conn, 2, 10);
    replicate_once(&db, &url, &["--force-snapshot"]);
    let snaps = snapshots();
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    assert_eq!(snaps.iter().max(), Some(&crate::support::max_txid(&url)));
    assert_eq!(
        restored_user_dump(&url, &dir.path().join("restored.db")),
        user_dump(&db)
    );
}
