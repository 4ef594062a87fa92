//! One writer per replica: the rolling deploy (two pods, one replica, a hand-over
//! without loss), a second replicator waiting and refused, a replica of another
//! database refused, and a holder paused past its lease that must write nothing.
//!
//! The rolling deploy is a scenario over [`StoreFixture`], run here on `file://` and
//! in `backends::s3` on moto.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::backends::{StoreFixture, litestream_config};
use crate::support::{
    Proc, SIGCONT, SIGINT, SIGSTOP, SIGTERM, integrity_ok, litestream_cmd, new_db, replica_cmd,
    run, user_dump, wait_until, write_batches,
};

const TIMEOUT: Duration = Duration::from_secs(60);

fn app() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("tests/fixtures/pod_app.py")
}

/// A `file://` store in a temporary directory.
pub struct FileStore {
    dir: TempDir,
}

impl FileStore {
    pub fn new() -> Self {
        Self {
            dir: TempDir::new().expect("tempdir"),
        }
    }
}

impl StoreFixture for FileStore {
    fn scheme(&self) -> &'static str {
        "file"
    }

    fn url(&self, path: &str) -> String {
        format!("file://{}/{path}", self.dir.path().display())
    }

    fn creds(&self, _cmd: &mut Command) {}

    fn litestream_replica(&self, path: &str) -> String {
        format!(
            "      type: file\n      path: {}/{path}\n",
            self.dir.path().display()
        )
    }

    fn key_prefix(&self) -> &'static str {
        "ltx/"
    }
}

/// One pod: its own disk (a directory), the shared replica, a service writing rows.
struct Pod {
    name: &'static str,
    dir: PathBuf,
}

impl Pod {
    fn new(root: &Path, name: &'static str, f: &dyn StoreFixture) -> Pod {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("pod dir");
        std::fs::write(
            dir.join("config.yml"),
            format!(
                "replication:\n  enabled: true\n  replica_url: {}\n  sync_interval: 100ms\n  lease_ttl: 3s\n  lease_wait: 60s\ndatabases:\n  - ./data/app.db\n",
                f.url("deploy")
            ),
        )
        .expect("pod config");
        Pod { name, dir }
    }

    fn db(&self) -> PathBuf {
        self.dir.join("data/app.db")
    }

    /// `replicate --config --exec app`: restore if missing, replicate, run the app.
    fn start(&self, f: &dyn StoreFixture) -> Proc {
        let mut cmd = replica_cmd();
        f.creds(&mut cmd);
        cmd.args(["replicate", "--config"])
            .arg(self.dir.join("config.yml"))
            .arg("--exec")
            .arg(format!(
                "python3 {} {} {}",
                app().display(),
                self.db().display(),
                self.name
            ));
        Proc::spawn(&format!("pod {} ({})", self.name, f.scheme()), cmd)
    }

    fn rows(&self) -> Vec<String> {
        user_dump(self.db())
    }
}

fn restore_latest(f: &dyn StoreFixture, out: &Path) -> Vec<String> {
    let mut cmd = replica_cmd();
    f.creds(&mut cmd);
    let o = run(cmd
        .args(["restore", "-o"])
        .arg(out)
        .arg(f.url("deploy/app")));
    assert!(o.success(), "replica restore failed\n{o}");
    assert!(
        integrity_ok(out),
        "the restored database fails integrity_check"
    );
    user_dump(out)
}

fn litestream_restore(f: &dyn StoreFixture, dir: &Path, out: &Path) -> Vec<String> {
    let cfg = litestream_config(f, dir, &dir.join("app.db"), "deploy/app");
    let mut cmd = litestream_cmd();
    f.creds(&mut cmd);
    f.litestream_env(&mut cmd);
    let o = run(cmd
        .args(["restore", "-config"])
        .arg(&cfg)
        .arg("-o")
        .arg(out)
        .arg(dir.join("app.db")));
    assert!(o.success(), "litestream restore failed\n{o}");
    user_dump(out)
}

/// Scenario: pod A replicates with `--config --exec`; pod B boots on an empty disk
/// with the same config while A runs, and waits for A's lease (saying so); A gets
/// SIGTERM, flushes and lets go; B restores everything A committed and carries on.
/// The replica then restores, with either tool, to exactly B's database, and every
/// row A's service committed is in it.
pub fn rolling_deploy_hands_over_without_loss(f: &dyn StoreFixture) {
    let root = TempDir::new().expect("tempdir");
    let a = Pod::new(root.path(), "A", f);
    let b = Pod::new(root.path(), "B", f);
    let mut pa = a.start(f);
    assert!(
        wait_until(TIMEOUT, || a.db().exists() && a.rows().len() > 50),
        "pod A's service did not start\n{}",
        pa.output_report()
    );
    std::thread::sleep(Duration::from_secs(2));
    let mut pb = b.start(f);
    assert!(
        wait_until(TIMEOUT, || pb
            .stderr()
            .contains("waiting for the replica's lease")),
        "pod B did not wait for A's lease\n{}",
        pb.output_report()
    );
    assert!(
        pb.stderr().contains("replicating ") && pb.stderr().contains(&a.db().display().to_string()),
        "B's log does not name the holder's database\n{}",
        pb.output_report()
    );
    assert!(!b.db().exists(), "B restored before A let go");
    std::thread::sleep(Duration::from_secs(2));
    let st = pa.stop(SIGTERM, TIMEOUT);
    assert_eq!(st.code(), Some(0), "pod A\n{}", pa.output_report());
    let a_rows = a.rows();

    assert!(
        wait_until(TIMEOUT, || b.db().exists()
            && b.rows().iter().any(|r| r.contains("t:\"B\""))),
        "pod B's service did not start after the hand-over\n{}",
        pb.output_report()
    );
    std::thread::sleep(Duration::from_secs(1));
    let st = pb.stop(SIGTERM, TIMEOUT);
    assert_eq!(st.code(), Some(0), "pod B\n{}", pb.output_report());
    let b_rows = b.rows();

    let b_set: HashSet<&String> = b_rows.iter().collect();
    let lost: Vec<&String> = a_rows.iter().filter(|r| !b_set.contains(r)).collect();
    assert!(
        lost.is_empty(),
        "{} of the {} rows pod A committed are missing from pod B's database, e.g. {:?}",
        lost.len(),
        a_rows.len(),
        lost.first()
    );
    let ours = restore_latest(f, &root.path().join("ours.db"));
    assert_eq!(
        ours, b_rows,
        "the replica's latest state is not pod B's database"
    );
    let theirs = litestream_restore(f, root.path(), &root.path().join("theirs.db"));
    assert_eq!(theirs, b_rows, "Litestream restores another state");
}

#[test]
fn rolling_deploy_on_file() {
    rolling_deploy_hands_over_without_loss(&FileStore::new());
}

fn replicate(db: &Path, url: &str, extra: &[&str]) -> Command {
    let mut cmd = replica_cmd();
    cmd.args(["replicate", "--sync-interval", "100ms", "--lease-ttl", "3s"])
        .args(extra)
        .arg(db)
        .arg(url);
    cmd
}

/// A second replicator of the same URL, for the same or another database, waits for
/// the holder and then gives up naming it; once the holder stopped, another database
/// is refused as a foreign replica (exit 2) unless `--take-over-replica`; the replica
/// restores to its database throughout.
#[test]
fn a_second_replicator_waits_and_another_database_is_refused() {
    let store = FileStore::new();
    let url = store.url("one");
    let dir = TempDir::new().expect("tempdir");
    let (db_a, db_b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let conn_a = new_db(&db_a);
    write_batches(&conn_a, 3, 20);
    let conn_b = new_db(&db_b);
    write_batches(&conn_b, 2, 7);

    let mut holder = Proc::spawn("replicate a.db", replicate(&db_a, &url, &[]));
    assert!(
        wait_until(TIMEOUT, || holder.is_replicating()),
        "{}",
        holder.output_report()
    );
    for (db, what) in [(&db_b, "another database"), (&db_a, "the same database")] {
        let o = run(&mut replicate(db, &url, &["--lease-wait", "2s"]));
        assert_eq!(
            o.code(),
            Some(1),
            "{what}: a second replicator must give up\n{o}"
        );
        assert!(
            o.stderr.contains("is leased by") && o.stderr.contains(&db_a.display().to_string()),
            "{what}: the message must name the holder and its database\n{o}"
        );
    }
    write_batches(&conn_a, 2, 5);
    let st = holder.stop(SIGINT, TIMEOUT);
    assert_eq!(st.code(), Some(0), "{}", holder.output_report());
    let a_rows = user_dump(&db_a);

    let o = run(&mut replicate(&db_b, &url, &[]));
    assert_eq!(o.code(), Some(2), "another database must be refused\n{o}");
    assert!(
        o.stderr
            .contains("holds the replica of another database (a.db")
            && o.stderr.contains("--take-over-replica"),
        "{o}"
    );
    let out = dir.path().join("restored-a.db");
    let o = run(replica_cmd().args(["restore", "-o"]).arg(&out).arg(&url));
    assert!(o.success(), "{o}");
    assert_eq!(
        user_dump(&out),
        a_rows,
        "the refused run changed the replica"
    );

    let mut taker = Proc::spawn(
        "replicate b.db --take-over-replica",
        replicate(&db_b, &url, &["--take-over-replica"]),
    );
    assert!(
        wait_until(TIMEOUT, || taker.is_replicating()),
        "{}",
        taker.output_report()
    );
    let st = taker.stop(SIGINT, TIMEOUT);
    assert_eq!(st.code(), Some(0), "{}", taker.output_report());
    let out = dir.path().join("restored-b.db");
    let o = run(replica_cmd().args(["restore", "-o"]).arg(&out).arg(&url));
    assert!(o.success(), "{o}");
    assert_eq!(
        user_dump(&out),
        user_dump(&db_b),
        "taken over: b.db is the latest state"
    );
}

/// A holder frozen (SIGSTOP) past its lease loses it to a new pod; thawed, it must not
/// write a single object, must stop its service and exit non-zero, and the replica
/// restores to the new owner's database.
#[test]
fn a_holder_paused_past_its_lease_writes_nothing_and_exits() {
    let store = FileStore::new();
    let root = TempDir::new().expect("tempdir");
    let a = Pod::new(root.path(), "A", &store);
    let b = Pod::new(root.path(), "B", &store);
    let mut pa = a.start(&store);
    assert!(
        wait_until(TIMEOUT, || a.db().exists() && a.rows().len() > 50),
        "{}",
        pa.output_report()
    );
    std::thread::sleep(Duration::from_secs(1));
    pa.signal(SIGSTOP);
    let mut pb = b.start(&store);
    assert!(
        wait_until(TIMEOUT, || b.db().exists()
            && b.rows().iter().any(|r| r.contains("t:\"B\""))),
        "pod B did not take over an expired lease\n{}",
        pb.output_report()
    );
    std::thread::sleep(Duration::from_secs(1));
    // B is frozen too while A thaws, so any change to the replica would be A's.
    pb.signal(SIGSTOP);
    std::thread::sleep(Duration::from_millis(500));
    let before = objects(store.dir.path());
    pa.signal(SIGCONT);
    let st = pa.wait_timeout(TIMEOUT).unwrap_or_else(|| {
        panic!(
            "pod A did not exit after losing its lease\n{}",
            pa.output_report()
        )
    });
    assert_ne!(
        st.code(),
        Some(0),
        "pod A must fail\n{}",
        pa.output_report()
    );
    assert!(
        pa.stderr().contains("lease lost"),
        "pod A must say it lost the lease\n{}",
        pa.output_report()
    );
    assert_eq!(
        objects(store.dir.path()),
        before,
        "pod A wrote to the replica after losing its lease\n{}",
        pa.output_report()
    );
    pb.signal(SIGCONT);
    std::thread::sleep(Duration::from_secs(2));
    let st = pb.stop(SIGTERM, TIMEOUT);
    assert_eq!(st.code(), Some(0), "{}", pb.output_report());
    let b_rows = b.rows();
    let ours = restore_latest(&store, &root.path().join("ours.db"));
    assert_eq!(ours, b_rows, "the replica is not pod B's database");
    let theirs = litestream_restore(&store, root.path(), &root.path().join("theirs.db"));
    assert_eq!(theirs, b_rows, "Litestream restores another state");
}

/// Every file below `dir` with its size and modification time.
fn objects(dir: &Path) -> std::collections::BTreeMap<String, (u64, std::time::SystemTime)> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(p);
            } else if let Ok(t) = m.modified() {
                out.insert(p.display().to_string(), (m.len(), t));
            }
        }
    }
    out
}
