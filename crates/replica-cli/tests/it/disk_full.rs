//! A full disk under the database and its spool: `replicate` keeps running, says so
//! once, and catches up when space is freed; the restore is then exact.
//!
//! The disk is a 16 MiB tmpfs (the tests run as root, as CI does); the replica is
//! outside it. A restore that cannot fit fails before it writes, and cleans up.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tempfile::TempDir;

use crate::support::{
    Proc, SIGINT, dir_listing, file_url, new_db, random_blob, replica_cmd, run, user_dump,
    wait_until, write_batches,
};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A small tmpfs, unmounted on drop.
struct Tmpfs {
    _dir: TempDir,
    path: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = TempDir::new().expect("tempdir");
        let path = dir.path().to_path_buf();
        let o = run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&path));
        assert!(
            o.success(),
            "mounting a {size} tmpfs at {} failed; this test needs root (CI runs as root)\n{o}",
            path.display()
        );
        Tmpfs { _dir: dir, path }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills `dir`'s file system with 64 KiB files until a write fails.
fn fill(dir: &Path) -> Vec<PathBuf> {
    use std::io::Write;
    let chunk = vec![0xa5u8; 64 << 10];
    let mut files = Vec::new();
    for i in 0.. {
        let p = dir.join(format!("filler-{i:05}"));
        let ok = std::fs::File::create(&p)
            .and_then(|mut f| f.write_all(&chunk).and_then(|()| f.sync_all()))
            .is_ok();
        files.push(p);
        if !ok {
            break;
        }
    }
    files
}

#[test]
fn a_full_disk_pauses_capture_and_replication_catches_up() {
    let fs = Tmpfs::mount("16m");
    let db = fs.path.join("app.db");
    let replica = TempDir::new().expect("tempdir");
    let url = file_url(&replica.path().join("r"));
    let conn = new_db(&db);
    write_batches(&conn, 3, 20);
    let addr = crate::operate::free_addr();
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
    let mut rep = Proc::spawn("replicate on a small tmpfs", cmd);
    let gauge = |name: &str, extra: &str| crate::operate::metric(&addr, name, &db, extra);
    assert!(
        wait_until(TIMEOUT, || rep.stderr().contains("snapshot spooled")),
        "{}",
        rep.output_report()
    );
    write_batches(&conn, 2, 10);
    std::thread::sleep(Duration::from_secs(1));

    // Leave 512 KiB free, then commit 320 KiB: the WAL takes it, the spool cannot.
    let mut fillers = fill(&fs.path);
    for p in fillers.drain(..8) {
        std::fs::remove_file(p).expect("freeing 64 KiB");
    }
    let mut rng = StdRng::seed_from_u64(3);
    conn.execute(
        "INSERT INTO t(v, b) VALUES ('while full', ?1)",
        [random_blob(&mut rng, 320 << 10)],
    )
    .expect("the commit fits in the WAL");
    assert!(
        wait_until(TIMEOUT, || rep.stderr().contains("the disk is full")),
        "replicate did not notice the full disk\n{}",
        rep.output_report()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        rep.is_running(),
        "replicate stopped on a full disk\n{}",
        rep.output_report()
    );
    assert_eq!(
        gauge("replica_disk_full", ""),
        Some(1.0),
        "{}",
        rep.output_report()
    );
    assert_eq!(
        gauge("replica_errors_total", "kind=\"disk_full\""),
        Some(1.0),
        "one pause, counted once"
    );
    assert_eq!(
        rep.stderr().matches("the disk is full").count(),
        1,
        "the condition is logged once\n{}",
        rep.output_report()
    );

    for p in fillers {
        let _ = std::fs::remove_file(p);
    }
    assert!(
        wait_until(TIMEOUT, || rep.stderr().contains("capture resumed")),
        "capture did not resume once space was freed\n{}",
        rep.output_report()
    );
    assert_eq!(gauge("replica_disk_full", ""), Some(0.0));
    write_batches(&conn, 2, 5);
    let st = rep.stop(SIGINT, TIMEOUT);
    assert_eq!(st.code(), Some(0), "{}", rep.output_report());
    let source = user_dump(&db);
    drop(conn);
    let out = replica.path().join("restored.db");
    let o = run(replica_cmd().args(["restore", "-o"]).arg(&out).arg(&url));
    assert!(o.success(), "{o}");
    assert_eq!(user_dump(&out), source, "the restore is not the database");
}

/// A restore that cannot fit fails before it writes anything, with a message naming
/// the output, the space needed and the space free, and leaves nothing behind; the
/// same replica restores into a disk that is large enough.
#[test]
fn a_restore_that_cannot_fit_fails_before_writing() {
    let src = TempDir::new().expect("tempdir");
    let db = src.path().join("big.db");
    let url = file_url(&src.path().join("r"));
    let conn = new_db(&db);
    conn.execute_batch("CREATE TABLE blobs(id INTEGER PRIMARY KEY, b BLOB)")
        .expect("create");
    let mut rng = StdRng::seed_from_u64(11);
    for _ in 0..6 {
        conn.execute(
            "INSERT INTO blobs(b) VALUES (?1)",
            [random_blob(&mut rng, 1 << 20)],
        )
        .expect("insert");
    }
    let mut cmd = replica_cmd();
    cmd.args(["replicate", "--sync-interval", "100ms"])
        .arg(&db)
        .arg(&url);
    let mut rep = Proc::spawn("replicate a 6 MiB database", cmd);
    assert!(
        wait_until(TIMEOUT, || rep.stderr().contains("snapshot spooled")),
        "{}",
        rep.output_report()
    );
    write_batches(&conn, 2, 10);
    let st = rep.stop(SIGINT, TIMEOUT);
    assert_eq!(st.code(), Some(0), "{}", rep.output_report());
    let source = user_dump(&db);
    drop(conn);

    let small = Tmpfs::mount("2m");
    let out = small.path.join("restored.db");
    let o = run(replica_cmd().args(["restore", "-o"]).arg(&out).arg(&url));
    assert_eq!(o.code(), Some(1), "{o}");
    assert!(
        o.stderr.contains("not enough space to restore") && o.stderr.contains("restored.db"),
        "the error does not say what is missing\n{o}"
    );
    assert!(
        dir_listing(&small.path).is_empty(),
        "a failed restore left {:?}",
        dir_listing(&small.path)
    );

    let large = Tmpfs::mount("16m");
    let out = large.path.join("restored.db");
    let o = run(replica_cmd().args(["restore", "-o"]).arg(&out).arg(&url));
    assert!(o.success(), "{o}");
    assert_eq!(user_dump(&out), source, "the restore is not the database");

    // An unchecked restore writes the snapshot around the page cache (tmpfs takes
    // O_DIRECT since Linux 6.6; where a filesystem refuses it, the same writes go
    // through the page cache).
    std::fs::remove_file(&out).expect("remove the first restore");
    let out = large.path.join("unchecked.db");
    let o = run(replica_cmd()
        .args(["restore", "--integrity-check", "none", "-o"])
        .arg(&out)
        .arg(&url));
    assert!(o.success(), "{o}");
    assert_eq!(
        user_dump(&out),
        source,
        "the unchecked restore is not the database"
    );
}
