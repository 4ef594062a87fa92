//! File modes of everything `replica` writes (real processes, under a permissive
//! umask): the spool beside the database, the files and directories of a `file://`
//! and an SFTP replica (OpenSSH sshd, started by `cargo xtask test`), and restored
//! databases, follow the database's permission bits and are never wider.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{
    Proc, SIGINT, new_db, replica_bin, run, user_dump, wait_until, write_batches,
};
use tempfile::TempDir;

const TIMEOUT: Duration = Duration::from_secs(30);

/// `replica` started through `sh` with `umask` set, as a user's shell would.
fn replica_with_umask(umask: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
        .arg(replica_bin())
        .stdin(Stdio::null());
    cmd
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .mode()
        & 0o7777
}

fn chmod(p: &Path, bits: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(bits))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

/// Directory bits matching file bits: search wherever reading is allowed.
fn dir_bits(file: u32) -> u32 {
    file | ((file & 0o444) >> 2)
}

/// Every entry below `root` (and `root` itself): files must have `file`, directories
/// `dir`. Entries that vanish while walking (a running replicator renames and
/// recycles) are skipped. Returns the number of files seen.
fn check_tree(what: &str, root: &Path, file: u32, dir: u32) -> usize {
    let mut wrong = Vec::new();
    let mut files = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let bits = meta.mode() & 0o7777;
        if meta.is_dir() {
            if bits != dir {
                wrong.push(format!("{} is a directory with {bits:04o}", p.display()));
            }
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else {
            files += 1;
            if bits != file {
                wrong.push(format!("{} is a file with {bits:04o}", p.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{what}: expected files {file:04o} and directories {dir:04o}, but:\n{}",
        wrong.join("\n")
    );
    files
}

/// Files below `root` whose name ends with `suffix`.
fn files_ending(root: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if p.to_string_lossy().ends_with(suffix) {
            out.push(p);
        }
    }
    out
}

fn spool_of(db: &Path) -> PathBuf {
    db.with_file_name(format!(
        ".{}-replica",
        db.file_name().and_then(|n| n.to_str()).expect("db name")
    ))
}

/// Where a replica lives, as a URL for `replica` and as a local directory to inspect.
struct Target {
    url: String,
    /// The directory holding the replica's files.
    dir: PathBuf,
    /// The first directory `replica` had to create (its parent existed).
    created_from: PathBuf,
}

fn file_target(base: &Path) -> Target {
    // An existing directory stays as it is; what replica creates below it follows
    // the database.
    let existing = base.join("existing");
    std::fs::create_dir(&existing).expect("mkdir existing");
    chmod(&existing, 0o755);
    let dir = existing.join("backups/app");
    Target {
        url: format!("file://{}", dir.display()),
        dir,
        created_from: existing.join("backups"),
    }
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

/// A fresh directory below the SFTP emulator's root, which is a local directory.
fn sftp_target() -> Target {
    let key = var("REPLICA_SFTP_KEY");
    let host_key_file = std::env::var("REPLICA_SFTP_HOST_KEY")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(&key).with_file_name("host_ed25519.pub"));
    let host_key = std::fs::read_to_string(&host_key_file).expect("reading the host key");
    let host_key = host_key
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let created_from = PathBuf::from(var("REPLICA_SFTP_ROOT"))
        .join(format!("modes-{:016x}", rand::random::<u64>()));
    let dir = created_from.join("app");
    Target {
        url: format!(
            "sftp://{}@{}:{}{}?key_path={}&host_key={}",
            var("REPLICA_SFTP_USER"),
            var("REPLICA_SFTP_HOST"),
            var("REPLICA_SFTP_PORT"),
            dir.display(),
            enc(&key),
            enc(&host_key)
        ),
        dir,
        created_from,
    }
}

/// Replicates a database of mode `db_mode` (set with chmod) to `target` from a
/// process with umask 022, then checks the spool, the replica and restores.
fn modes_follow_the_database(db_mode: u32, target: impl FnOnce(&Path) -> Target) {
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = new_db(&db);
    chmod(&db, db_mode);
    write_batches(&conn, 3, 50);
    let t = target(dir.path());
    let existing_parent = t
        .created_from
        .parent()
        .map(|p| (p.to_path_buf(), mode_of(p)));

    let mut cmd = replica_with_umask("022");
    cmd.args(["replicate", "--sync-interval", "100ms", "--levels", "1s,2s"])
        .arg(&db)
        .arg(&t.url);
    let mut rep = Proc::spawn("replica replicate", cmd);
    write_batches(&conn, 20, 40);
    // Compacted levels exist too (their directories are created later).
    let l1 = wait_until(TIMEOUT, || {
        !files_ending(&t.dir.join("ltx/1"), ".ltx").is_empty()
            && !files_ending(&t.dir.join("ltx/2"), ".ltx").is_empty()
    });
    assert!(l1, "no L1/L2 files appeared\n{}", rep.output_report());
    // While it runs (pending files, scratch files, recycled files come and go).
    let spool = spool_of(&db);
    for _ in 0..5 {
        write_batches(&conn, 2, 20);
        check_tree(
            "spool while replicating",
            &spool,
            db_mode,
            dir_bits(db_mode),
        );
    }
    let st = rep.stop(SIGINT, TIMEOUT);
    assert_eq!(
        st.code(),
        Some(0),
        "replicate: {st}\n{}",
        rep.output_report()
    );
    drop(conn);
    let source = user_dump(&db);

    // The spool: state, L0 copies, free files, and every directory.
    let n = check_tree("spool", &spool, db_mode, dir_bits(db_mode));
    assert!(
        spool.join("state").is_file() && n >= 2,
        "spool has {n} files"
    );

    // The replica: every file, and every directory replica created; not the existing
    // parent.
    let n = check_tree("replica", &t.created_from, db_mode, dir_bits(db_mode));
    assert!(n >= 4, "replica has {n} files");
    for level in ["0", "1", "2", "9"] {
        assert!(
            !files_ending(&t.dir.join("ltx").join(level), ".ltx").is_empty(),
            "no files at level {level}"
        );
    }
    if let Some((parent, before)) = existing_parent {
        assert_eq!(mode_of(&parent), before, "{} was changed", parent.display());
    }
    let record = std::fs::read_to_string(t.dir.join("replica-db.json")).expect("the root record");
    let recorded: serde_json::Value = serde_json::from_str(&record).expect("JSON record");
    assert_eq!(recorded["mode"], format!("{db_mode:04o}"), "{record}");

    // Restores get the recorded mode, under a permissive and under a strict umask;
    // the directories they create match it.
    for umask in ["022", "077"] {
        let out = dir.path().join(format!("restored-{umask}/sub/out.db"));
        let o = run(replica_with_umask(umask)
            .args(["restore", "-o"])
            .arg(&out)
            .arg(&t.url));
        assert!(o.success(), "restore under umask {umask}\n{o}");
        assert_eq!(mode_of(&out), db_mode, "restored under umask {umask}");
        for d in [
            out.parent().expect("sub"),
            out.parent().and_then(Path::parent).expect("restored"),
        ] {
            assert_eq!(mode_of(d), dir_bits(db_mode), "{}", d.display());
        }
        let left: Vec<_> = std::fs::read_dir(out.parent().expect("sub"))
            .expect("read_dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["out.db"], "restore left other files");
        // Opened by an application, SQLite gives -wal and -shm the database's mode.
        assert_eq!(user_dump(&out), source, "restored content");
        for side in ["out.db-wal", "out.db-shm"] {
            let p = out.with_file_name(side);
            if p.exists() {
                assert_eq!(mode_of(&p), db_mode, "{}", p.display());
            }
        }
    }
}

#[test]
fn file_replica_of_a_0600_database() {
    modes_follow_the_database(0o600, file_target);
}

#[test]
fn file_replica_of_a_0640_database() {
    modes_follow_the_database(0o640, file_target);
}

#[test]
fn sftp_replica_of_a_0600_database() {
    modes_follow_the_database(0o600, |_| sftp_target());
}

#[test]
fn sftp_replica_of_a_0640_database() {
    modes_follow_the_database(0o640, |_| sftp_target());
}

/// Replicates a 0640 database to a file replica and stops; returns the temp dir, the
/// replica directory and its URL.
fn replicated_0640() -> (TempDir, PathBuf, String) {
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = new_db(&db);
    chmod(&db, 0o640);
    write_batches(&conn, 3, 20);
    let rep_dir = dir.path().join("rep/app");
    let url = format!("file://{}", rep_dir.display());
    let mut cmd = replica_with_umask("022");
    cmd.args(["replicate", "--sync-interval", "100ms"])
        .arg(&db)
        .arg(&url);
    let mut rep = Proc::spawn("replica replicate", cmd);
    assert!(
        wait_until(TIMEOUT, || !files_ending(&rep_dir.join("ltx/9"), ".ltx")
            .is_empty()),
        "no snapshot\n{}",
        rep.output_report()
    );
    let st = rep.stop(SIGINT, TIMEOUT);
    assert_eq!(
        st.code(),
        Some(0),
        "replicate: {st}\n{}",
        rep.output_report()
    );
    (dir, rep_dir, url)
}

#[test]
fn restore_mode_from_flag_config_or_private_default() {
    let (dir, rep_dir, url) = replicated_0640();
    let restore = |out: &Path, extra: &[&str]| {
        let o = run(replica_with_umask("022")
            .arg("restore")
            .args(extra)
            .arg("-o")
            .arg(out)
            .arg(&url));
        assert!(o.success(), "restore {extra:?}\n{o}");
        mode_of(out)
    };
    assert_eq!(restore(&dir.path().join("a.db"), &[]), 0o640);
    assert_eq!(
        restore(&dir.path().join("b.db"), &["--mode", "0604"]),
        0o604
    );
    assert_eq!(restore(&dir.path().join("c.db"), &["--mode", "600"]), 0o600);
    let o = run(replica_with_umask("022")
        .args(["restore", "--mode", "0999", "-o"])
        .arg(dir.path().join("bad.db"))
        .arg(&url));
    assert_eq!(o.code(), Some(2), "a bad --mode is a usage error\n{o}");
    assert!(o.stderr.contains("octal"), "{o}");

    // The config file's restore_mode, and --mode over it.
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir data");
    let cfg = dir.path().join("replica.yml");
    std::fs::write(
        &cfg,
        format!(
            "replication:\n  enabled: true\n  replica_url: file://{}\n  restore_mode: \"0660\"\ndatabases:\n  - ./data/app.db\n",
            rep_dir.parent().expect("rep").display()
        ),
    )
    .expect("config");
    let by_config = |extra: &[&str]| {
        let _ = std::fs::remove_file(data.join("app.db"));
        let o = run(replica_with_umask("022")
            .args(["restore", "--config"])
            .arg(&cfg)
            .args(extra));
        assert!(o.success(), "restore --config {extra:?}\n{o}");
        mode_of(&data.join("app.db"))
    };
    assert_eq!(by_config(&[]), 0o660);
    assert_eq!(by_config(&["--mode", "0644"]), 0o644);

    // A replica that records no mode (written by Litestream or an older replica):
    // the restored file is private.
    std::fs::remove_file(rep_dir.join("replica-db.json")).expect("removing the record");
    assert_eq!(restore(&dir.path().join("d.db"), &[]), 0o600);
}

/// Run as root into a directory owned by someone else, the restored database belongs
/// to that directory's owner; run as anyone else, to whoever ran the restore.
#[test]
fn restored_database_belongs_to_the_directory_owner_when_root_restores() {
    let (dir, _rep_dir, url) = replicated_0640();
    let owned = dir.path().join("owned");
    std::fs::create_dir(&owned).expect("mkdir");
    let me = std::fs::metadata(dir.path()).expect("stat").uid();
    let root = me == 0;
    let (uid, gid) = if root {
        (4242, 4243)
    } else {
        (me, std::fs::metadata(dir.path()).expect("stat").gid())
    };
    if root {
        std::os::unix::fs::chown(&owned, Some(uid), Some(gid)).expect("chown the directory");
    }
    let out = owned.join("app.db");
    let o = run(replica_with_umask("022")
        .args(["restore", "-o"])
        .arg(&out)
        .arg(&url));
    assert!(o.success(), "restore\n{o}");
    let meta = std::fs::metadata(&out).expect("restored");
    assert_eq!(
        (meta.uid(), meta.gid()),
        (uid, gid),
        "owner of the restored file"
    );
    assert_eq!(meta.mode() & 0o7777, 0o640);
    if root {
        assert!(
            o.stderr.contains("given to the owner of its directory"),
            "{o}"
        );
    }
}

/// A database replaced by a file with another mode: the spool follows at once, and
/// the replica's record and new replica files follow too.
#[test]
fn a_replacing_database_with_another_mode_is_followed() {
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = new_db(&db);
    chmod(&db, 0o640);
    write_batches(&conn, 3, 20);
    let rep_dir = dir.path().join("rep");
    let url = format!("file://{}", rep_dir.display());
    let mut cmd = replica_with_umask("022");
    cmd.args(["replicate", "--sync-interval", "100ms"])
        .arg(&db)
        .arg(&url)
        .env("REPLICA_LOG", "info");
    let mut rep = Proc::spawn("replica replicate", cmd);
    let snapshots = || files_ending(&rep_dir.join("ltx/9"), ".ltx");
    assert!(
        wait_until(TIMEOUT, || snapshots().len() == 1),
        "no snapshot\n{}",
        rep.output_report()
    );
    let first = snapshots();

    // A new, private database is moved into place.
    let next = dir.path().join("next.db");
    let c2 = new_db(&next);
    write_batches(&c2, 2, 10);
    drop(c2);
    chmod(&next, 0o600);
    drop(conn);
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.path().join(format!("app.db{suffix}")));
    }
    std::fs::rename(&next, &db).expect("rename over the database");
    assert!(
        wait_until(TIMEOUT, || snapshots().len() == 2),
        "no snapshot of the new file\n{}",
        rep.output_report()
    );
    assert!(
        wait_until(TIMEOUT, || std::fs::read_to_string(
            rep_dir.join("replica-db.json")
        )
        .is_ok_and(|r| r.contains("\"0600\""))),
        "the record does not follow\n{}",
        rep.output_report()
    );
    let st = rep.stop(SIGINT, TIMEOUT);
    assert_eq!(
        st.code(),
        Some(0),
        "replicate: {st}\n{}",
        rep.output_report()
    );
    check_tree("spool after the replacement", &spool_of(&db), 0o600, 0o700);
    let new_snapshot: Vec<_> = snapshots()
        .into_iter()
        .filter(|s| !first.contains(s))
        .collect();
    assert_eq!(new_snapshot.len(), 1);
    assert_eq!(mode_of(&new_snapshot[0]), 0o600, "the new snapshot");
    assert_eq!(
        mode_of(&first[0]),
        0o640,
        "the old snapshot is left as it was"
    );
    let out = dir.path().join("out.db");
    let o = run(replica_with_umask("022")
        .args(["restore", "-o"])
        .arg(&out)
        .arg(&url));
    assert!(o.success(), "restore\n{o}");
    assert_eq!(mode_of(&out), 0o600);
}
