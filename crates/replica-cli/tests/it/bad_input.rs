//! Bad input: wrong URLs and flags, files that are not databases, damaged replicas,
//! existing outputs. Each must fail with a clear message and the documented exit
//! code (1 runtime failure, 2 usage or configuration error), and leave nothing
//! half-written behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngCore;

use crate::support::{
    self, Output, Proc, SIGINT, dir_listing, file_url, ltx_name_range, max_txid, replicator_cmd,
    txid_hex,
};

const LONG: Duration = Duration::from_secs(60);

fn tempdir() -> tempfile::TempDir {
    tempfile::TempDir::new().expect("tempdir")
}

fn replica(args: &[&str]) -> Output {
    support::run(support::replica_cmd().args(args))
}

#[track_caller]
fn assert_code(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.code(),
        Some(code),
        "{what}: expected exit code {code}\n{out}"
    );
}

#[track_caller]
fn assert_stderr_has(out: &Output, needle: &str, what: &str) {
    assert!(
        out.stderr.contains(needle),
        "{what}: stderr should mention {needle:?}\n{out}"
    );
}

// ---------------------------------------------------------------------------
// URLs and flags

#[test]
fn unknown_and_missing_url_schemes_are_usage_errors() {
    let dir = tempdir();
    let out = dir.path().join("out.db");
    let db = dir.path().join("app.db");
    for (url, needle) in [
        ("foo://x", "foo"),
        ("ftp://host/path", "ftp"),
        ("/tmp/replica-without-scheme", "/tmp/replica-without-scheme"),
        ("backups", "backups"),
    ] {
        let what = format!("restore from {url:?}");
        let r = support::run(
            support::replica_cmd()
                .args(["restore", "-o"])
                .arg(&out)
                .arg(url),
        );
        assert_code(&r, 2, &what);
        assert_stderr_has(&r, needle, &what);

        let what = format!("ltx of {url:?}");
        let r = replica(&["ltx", url]);
        assert_code(&r, 2, &what);
        assert_stderr_has(&r, needle, &what);

        let what = format!("replicate to {url:?}");
        let r = support::run(support::replica_cmd().arg("replicate").arg(&db).arg(url));
        assert_code(&r, 2, &what);
        assert_stderr_has(&r, needle, &what);
    }
    assert!(
        !out.exists() && !db.exists(),
        "a usage error created files: {:?}",
        dir_listing(dir.path())
    );
    assert!(
        dir_listing(dir.path()).is_empty(),
        "{:?}",
        dir_listing(dir.path())
    );
}

/// Every backend refuses an option it does not know instead of ignoring it (a
/// disabled scheme's message is tested in replica-core's registry).
#[test]
fn unknown_url_options_are_refused_by_every_backend() {
    let dir = tempdir();
    let out = dir.path().join("out.db");
    let db = dir.path().join("app.db");
    for url in [
        "s3://bucket/x?endpoint=http://127.0.0.1:9&bogus_option=1",
        "gcs://bucket/x?bogus_option=1",
        "gs://bucket/x?bogus_option=1",
        "abs://account@container/x?bogus_option=1",
        "sftp://user@127.0.0.1:9/x?bogus_option=1",
        "file:///tmp/x?bogus_option=1",
    ] {
        for (what, r) in [
            (
                format!("restore from {url}"),
                support::run(
                    support::replica_cmd()
                        .args(["restore", "-o"])
                        .arg(&out)
                        .arg(url),
                ),
            ),
            (format!("ltx of {url}"), replica(&["ltx", url])),
            (
                format!("replicate to {url}"),
                support::run(support::replica_cmd().arg("replicate").arg(&db).arg(url)),
            ),
        ] {
            assert_code(&r, 2, &what);
            assert_stderr_has(&r, "bogus_option", &what);
        }
    }
    assert!(
        dir_listing(dir.path()).is_empty(),
        "{:?}",
        dir_listing(dir.path())
    );
}

#[test]
fn relative_and_malformed_file_urls_are_usage_errors() {
    let dir = tempdir();
    let out = dir.path().join("out.db");
    let db = dir.path().join("app.db");
    for url in [
        "file:backups",
        "file:./backups",
        "file:../backups",
        "file://backups/x",
        "file://",
        "file:",
        "file:///tmp/x?opt=1",
        "file://user:secret@/tmp/x",
    ] {
        let what = format!("restore from {url:?}");
        let r = support::run(
            support::replica_cmd()
                .args(["restore", "-o"])
                .arg(&out)
                .arg(url),
        );
        assert_code(&r, 2, &what);
        assert!(
            r.stderr.contains(url) || r.stderr.contains("file:"),
            "{what}: the message should name the URL\n{r}"
        );
        let what = format!("replicate to {url:?}");
        let r = support::run(support::replica_cmd().arg("replicate").arg(&db).arg(url));
        assert_code(&r, 2, &what);
    }
    assert!(
        dir_listing(dir.path()).is_empty(),
        "{:?}",
        dir_listing(dir.path())
    );
}

#[test]
fn bad_flags_are_usage_errors() {
    let dir = tempdir();
    let out = dir.path().join("out.db");
    let db = dir.path().join("app.db");
    let root = dir.path().join("rep");
    let (out_s, db_s, url) = (
        out.to_str().expect("test setup").to_owned(),
        db.to_str().expect("test setup").to_owned(),
        file_url(&root),
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["replicate", &db_s, &url, "--sync-interval", "5parsecs"],
            "5parsecs",
        ),
        (
            vec!["replicate", &db_s, &url, "--sync-interval", "0s"],
            "sync-interval",
        ),
        (
            vec!["replicate", &db_s, &url, "--snapshot-interval", "soon"],
            "soon",
        ),
        (vec!["replicate", &db_s, &url, "--retention=-1h"], "-1h"),
        (vec!["replicate", &db_s, &url, "--bogus"], "--bogus"),
        (vec!["replicate", &db_s], "REPLICA_URL"),
        (vec!["restore", "-o", &out_s, &url, "--txid", "zz"], "zz"),
        (vec!["restore", "-o", &out_s, &url, "--txid", "0"], "txid"),
        (
            vec!["restore", "-o", &out_s, &url, "--txid", "11112222333344445"],
            "11112222333344445",
        ),
        (
            vec!["restore", "-o", &out_s, &url, "--timestamp", "yesterday"],
            "yesterday",
        ),
        (
            vec![
                "restore",
                "-o",
                &out_s,
                &url,
                "--txid",
                "2",
                "--timestamp",
                "2026-01-01T00:00:00Z",
            ],
            "--timestamp",
        ),
        (
            vec!["restore", "-o", &out_s, &url, "--parallelism", "0"],
            "parallelism",
        ),
        (
            vec!["restore", "-o", &out_s, &url, "--integrity-check", "maybe"],
            "maybe",
        ),
        (vec!["restore", &url], "--output"),
        (vec!["ltx", &url, "--level", "12"], "12"),
        (vec!["ltx", &url, "--level", "-1"], "-1"),
        (vec!["ltx", &url, "--level", "some"], "some"),
        (vec!["frobnicate"], "frobnicate"),
    ];
    for (args, needle) in cases {
        let what = format!("replica {}", args.join(" "));
        let r = replica(&args);
        assert_code(&r, 2, &what);
        assert_stderr_has(&r, needle, &what);
    }
    assert!(
        dir_listing(dir.path()).is_empty(),
        "{:?}",
        dir_listing(dir.path())
    );
}

#[test]
fn no_arguments_is_a_usage_error_and_version_works() {
    let r = replica(&[]);
    assert_code(&r, 2, "replica with no arguments");
    assert!(
        r.stderr.contains("Usage") || r.stderr.contains("usage"),
        "no arguments: expected a usage message\n{r}"
    );

    for args in [&["version"][..], &["--version"][..]] {
        let r = replica(args);
        assert_code(&r, 0, &format!("replica {}", args.join(" ")));
        let line = r.stdout.trim();
        assert!(
            line.contains("replica"),
            "version output should name the tool\n{r}"
        );
        let version = line.split_whitespace().nth(1).unwrap_or("");
        let parts: Vec<&str> = version.split('.').collect();
        assert!(
            parts.len() >= 3 && parts[..3].iter().all(|p| p.parse::<u32>().is_ok()),
            "version output should name a semantic version after the tool, got {line:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// replicate on things that are not databases

/// Runs `replica replicate DB URL`, expecting it to exit on its own.
fn replicate_expecting_exit(db: &Path, url: &str) -> (Option<i32>, String) {
    let mut cmd = support::replica_cmd();
    cmd.arg("replicate").arg(db).arg(url);
    let mut p = Proc::spawn("replicate", cmd);
    let st = p.wait_timeout(LONG);
    let Some(st) = st else {
        let report = p.output_report();
        p.kill();
        panic!(
            "replicate {} kept running instead of failing\n{report}",
            db.display()
        );
    };
    (st.code(), p.stderr())
}

#[test]
fn replicate_refuses_files_that_are_not_sqlite_and_leaves_them_untouched() {
    let mut random = vec![0u8; 8192];
    rand::rng().fill_bytes(&mut random);
    let text = "this is a perfectly ordinary text file, not a database\n".repeat(50);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", random),
        ("a text file", text.into_bytes()),
        ("a short text file", b"hello\n".to_vec()),
        (
            "a file with a wrong magic",
            b"SQLite format 2\0"
                .iter()
                .copied()
                .chain(std::iter::repeat_n(0u8, 4080))
                .collect(),
        ),
    ];
    for (what, bytes) in cases {
        let dir = tempdir();
        let db = dir.path().join("notadb.db");
        std::fs::write(&db, &bytes).expect("test setup");
        let before = dir_listing(dir.path());
        let rep = tempdir();
        let root = rep.path().join("rep");
        let (code, stderr) = replicate_expecting_exit(&db, &file_url(&root));
        assert_eq!(code, Some(1), "{what}: expected exit 1\n{stderr}");
        assert!(
            stderr.contains(&db.display().to_string()),
            "{what}: the message should name {}\n{stderr}",
            db.display()
        );
        assert!(
            std::fs::read(&db).expect("test setup") == bytes,
            "{what}: replicate modified the file it refused"
        );
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        assert!(
            !Path::new(&wal).exists(),
            "{what}: replicate created a -wal file beside a non-database"
        );
        assert_eq!(
            dir_listing(dir.path()),
            before,
            "{what}: replicate left files beside the refused file"
        );
        assert!(
            !root.join("ltx").exists(),
            "{what}: replicate wrote to the replica"
        );
    }
}

#[test]
fn replicate_on_unusable_paths_fails_clearly() {
    // A directory where the database should be.
    let dir = tempdir();
    let db = dir.path().join("adir.db");
    std::fs::create_dir(&db).expect("test setup");
    std::fs::write(db.join("inside"), b"x").expect("test setup");
    let before = dir_listing(dir.path());
    let rep = tempdir();
    let (code, stderr) = replicate_expecting_exit(&db, &file_url(&rep.path().join("rep")));
    assert_eq!(
        code,
        Some(1),
        "directory as database: expected exit 1\n{stderr}"
    );
    assert!(
        stderr.contains(&db.display().to_string()),
        "directory as database: the message should name {}\n{stderr}",
        db.display()
    );
    assert_eq!(
        dir_listing(dir.path()),
        before,
        "files appeared beside {db:?}"
    );
    assert_eq!(dir_listing(&db), ["inside"]);

    // A database in a directory that does not exist.
    let missing = dir.path().join("no-such-dir").join("sub");
    let db = missing.join("app.db");
    let (code, stderr) = replicate_expecting_exit(&db, &file_url(&rep.path().join("rep2")));
    assert_eq!(
        code,
        Some(1),
        "database in a missing directory: expected exit 1\n{stderr}"
    );
    assert!(
        stderr.contains(&db.display().to_string())
            || stderr.contains(&missing.display().to_string()),
        "database in a missing directory: the message should name the path\n{stderr}"
    );
    assert!(
        !dir.path().join("no-such-dir").exists(),
        "replicate created the missing directory"
    );
}

// ---------------------------------------------------------------------------
// Damaged replicas

/// A replica built by `replica replicate`: one snapshot and several L0 files, one
/// transaction each, with the row count of the source after each TXID.
struct Good {
    _dir: tempfile::TempDir,
    db: PathBuf,
    root: PathBuf,
    /// (TXID, rows in `t` at that TXID), ascending.
    history: Vec<(u64, i64)>,
}

fn rows(db: &Path) -> i64 {
    support::open_read_only(db)
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("counting rows")
}

fn build_good_replica() -> Good {
    let dir = tempdir();
    let db = dir.path().join("src.db");
    let root = dir.path().join("replica");
    let url = file_url(&root);
    let conn = support::open_wal_db(&db);
    conn.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 50)
         INSERT INTO t(v) SELECT printf('seed %d %s', i, hex(randomblob(100))) FROM c;",
    )
    .expect("seeding");
    // The damage below is done to L0 files; an L1 file compacted over them (the
    // default levels compact on wall-clock boundaries the test may cross) would let
    // the restore route around it.
    let cmd = replicator_cmd(&db, &url, &["--levels", "none"]);
    let mut p = Proc::spawn("replicate", cmd);
    assert!(
        support::wait_until(LONG, || max_txid(&url) >= 1),
        "no snapshot reached the replica\n{}",
        p.output_report()
    );
    let mut history = vec![(max_txid(&url), rows(&db))];
    for i in 0..6 {
        conn.execute(
            "INSERT INTO t(v) SELECT printf('row %d %s', ?1, hex(randomblob(300)))",
            [i],
        )
        .expect("insert");
        let prev = history.last().expect("history").0;
        assert!(
            support::wait_until(LONG, || max_txid(&url) > prev),
            "transaction {i} did not reach the replica\n{}",
            p.output_report()
        );
        history.push((max_txid(&url), rows(&db)));
    }
    drop(conn);
    let st = p.stop(SIGINT, LONG);
    assert_eq!(
        st.code(),
        Some(0),
        "replicate after SIGINT\n{}",
        p.output_report()
    );

    let good = Good {
        _dir: dir,
        db,
        root,
        history,
    };
    assert_eq!(good.files(9).len(), 1, "expected one snapshot");
    assert!(good.files(0).len() >= 6, "expected at least 6 L0 files");
    // The intact replica restores, so every failure below is the damage's doing.
    let ok = good._dir.path().join("control.db");
    let r = support::run(
        support::replica_cmd()
            .args(["restore", "-o"])
            .arg(&ok)
            .arg(&url),
    );
    assert_code(&r, 0, "restore of the intact replica");
    assert_eq!(support::dump(&ok), support::dump(&good.db));
    good
}

impl Good {
    /// The LTX files of `level` in the original replica, by name.
    fn files(&self, level: u8) -> Vec<PathBuf> {
        files_in(&self.root, level)
    }

    /// A copy of the replica to damage.
    fn copy(&self, dest: &Path) -> PathBuf {
        copy_dir(&self.root, dest);
        dest.to_path_buf()
    }
}

fn files_in(root: &Path, level: u8) -> Vec<PathBuf> {
    let d = root.join("ltx").join(level.to_string());
    let mut v: Vec<PathBuf> = std::fs::read_dir(&d)
        .map(|rd| rd.map(|e| e.expect("dir entry").path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("test setup");
    for e in std::fs::read_dir(from).expect("test setup") {
        let e = e.expect("dir entry");
        let dest = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).expect("test setup");
        }
    }
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .expect("test setup")
        .to_string_lossy()
        .into_owned()
}

fn flip_byte(path: &Path, offset: usize) {
    let mut b = std::fs::read(path).expect("test setup");
    assert!(
        offset < b.len(),
        "{} is only {} bytes",
        path.display(),
        b.len()
    );
    b[offset] ^= 0xff;
    std::fs::write(path, b).expect("test setup");
}

fn truncate(path: &Path, len: u64) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("test setup");
    f.set_len(len).expect("test setup");
}

/// Restores from the damaged replica at `root` into a fresh output directory and
/// checks the failure: exit 1, `needles` in stderr (any one of them, if several),
/// no output, and nothing left in the output directory.
#[track_caller]
fn expect_restore_failure(root: &Path, needles: &[String], what: &str) -> Output {
    let outdir = tempdir();
    std::fs::write(outdir.path().join("unrelated.txt"), b"keep me").expect("test setup");
    let before = dir_listing(outdir.path());
    let out = outdir.path().join("restored.db");
    let r = support::run(
        support::replica_cmd()
            .args(["restore", "-o"])
            .arg(&out)
            .arg(file_url(root)),
    );
    assert_code(&r, 1, what);
    if !needles.is_empty() {
        assert!(
            needles.iter().any(|n| r.stderr.contains(n.as_str())),
            "{what}: stderr should name the offending object (one of {needles:?})\n{r}"
        );
    }
    assert!(!out.exists(), "{what}: a failed restore created {out:?}");
    assert_eq!(
        dir_listing(outdir.path()),
        before,
        "{what}: a failed restore left files in the output directory"
    );
    r
}

#[test]
fn restore_rejects_a_flipped_byte_in_an_l0_file() {
    let good = build_good_replica();
    let work = tempdir();
    let root = good.copy(&work.path().join("rep"));
    let l0 = files_in(&root, 0);
    let victim = &l0[l0.len() / 2];
    let len = std::fs::metadata(victim).expect("test setup").len() as usize;
    flip_byte(victim, len / 2);
    expect_restore_failure(&root, &[name_of(victim)], "L0 with a flipped byte");
}

#[test]
fn restore_rejects_a_flipped_byte_in_the_snapshot_header() {
    let good = build_good_replica();
    // Commit (12..16), MinTXID (16..24), Timestamp (32..40), reserved (80..100):
    // all covered by the file checksum.
    for offset in [13, 23, 35, 90] {
        let work = tempdir();
        let root = good.copy(&work.path().join("rep"));
        let l9 = &files_in(&root, 9)[0];
        flip_byte(l9, offset);
        expect_restore_failure(
            &root,
            &[name_of(l9)],
            &format!("L9 with header byte {offset} flipped"),
        );
    }
}

#[test]
fn restore_rejects_truncated_l0_files() {
    let good = build_good_replica();
    for (label, cut) in [
        ("50 bytes", Some(50u64)),
        ("its size - 1", None),
        ("0 bytes", Some(0)),
    ] {
        let work = tempdir();
        let root = good.copy(&work.path().join("rep"));
        let l0 = files_in(&root, 0);
        let victim = &l0[1];
        let len = std::fs::metadata(victim).expect("test setup").len();
        truncate(victim, cut.unwrap_or(len - 1));
        expect_restore_failure(
            &root,
            &[name_of(victim)],
            &format!("L0 truncated to {label}"),
        );
    }
}

#[test]
fn restore_rejects_a_gap_but_restores_below_it() {
    let good = build_good_replica();
    let work = tempdir();
    let root = good.copy(&work.path().join("rep"));
    let l0 = files_in(&root, 0);
    let idx = l0.len() / 2;
    let (victim, next) = (&l0[idx], &l0[idx + 1]);
    let (missing_min, _) = ltx_name_range(&name_of(victim)).expect("test setup");
    std::fs::remove_file(victim).expect("test setup");
    expect_restore_failure(
        &root,
        &[name_of(next), txid_hex(missing_min)],
        "replica with a missing L0",
    );

    // A target before the gap does not need anything after it.
    let below = missing_min - 1;
    let want_rows = good
        .history
        .iter()
        .find(|(t, _)| *t == below)
        .map(|(_, r)| *r)
        .unwrap_or_else(|| panic!("no history for TXID {below}: {:?}", good.history));
    let outdir = tempdir();
    let out = outdir.path().join("below.db");
    let r = support::run(
        support::replica_cmd()
            .args(["restore", "-o"])
            .arg(&out)
            .arg(file_url(&root))
            .args(["--txid", &format!("{below:x}")]),
    );
    assert_code(&r, 0, &format!("restore --txid {below:x} below the gap"));
    assert_eq!(dir_listing(outdir.path()), ["below.db"]);
    assert!(support::integrity_ok(&out));
    assert_eq!(
        rows(&out),
        want_rows,
        "restore --txid {below:x} should hold the rows as of that TXID"
    );

    // And a target past the gap fails like the latest restore.
    let (_, past) = ltx_name_range(&name_of(next)).expect("test setup");
    let out2 = outdir.path().join("past.db");
    let r = support::run(
        support::replica_cmd()
            .args(["restore", "-o"])
            .arg(&out2)
            .arg(file_url(&root))
            .args(["--txid", &format!("{past:x}")]),
    );
    assert_code(&r, 1, &format!("restore --txid {past:x} past the gap"));
    assert!(!out2.exists());
    assert!(
        !dir_listing(outdir.path())
            .iter()
            .any(|n| n.starts_with("past.db") || n.starts_with(".past.db")),
        "a failed restore left files: {:?}",
        dir_listing(outdir.path())
    );
}

#[test]
fn restore_without_a_snapshot_fails() {
    let good = build_good_replica();
    let work = tempdir();
    let root = good.copy(&work.path().join("rep"));
    for l9 in files_in(&root, 9) {
        std::fs::remove_file(l9).expect("test setup");
    }
    let r = expect_restore_failure(&root, &[], "replica without its snapshot");
    assert!(
        r.stderr.to_ascii_lowercase().contains("snapshot"),
        "the message should say that no snapshot is available\n{r}"
    );
}

#[test]
fn restore_rejects_foreign_files_in_place_of_an_l0() {
    let good = build_good_replica();

    // Random bytes under a valid name.
    let work = tempdir();
    let root = good.copy(&work.path().join("rep"));
    let l0 = files_in(&root, 0);
    let victim = &l0[2];
    let mut junk = vec![0u8; std::fs::metadata(victim).expect("test setup").len() as usize];
    rand::rng().fill_bytes(&mut junk);
    std::fs::write(victim, &junk).expect("test setup");
    expect_restore_failure(&root, &[name_of(victim)], "L0 replaced by random bytes");

    // Random bytes that start like an LTX file.
    let work = tempdir();
    let root = good.copy(&work.path().join("rep"));
    let l0 = files_in(&root, 0);
    let victim = &l0[2];
    junk[..4].copy_from_slice(b"LTX1");
    std::fs::write(victim, &junk).expect("test setup");
    expect_restore_failure(
        &root,
        &[name_of(victim)],
        "L0 replaced by random bytes with the LTX magic",
    );

    // A valid LTX file of another TXID, copied under this name.
    let work = tempdir();
    let root = good.copy(&work.path().join("rep"));
    let l0 = files_in(&root, 0);
    let victim = &l0[2];
    std::fs::copy(&l0[1], victim).expect("test setup");
    expect_restore_failure(
        &root,
        &[name_of(victim)],
        "L0 replaced by a valid LTX file of another TXID",
    );

    // The snapshot copied under an L0 name.
    let work = tempdir();
    let root = good.copy(&work.path().join("rep"));
    let l0 = files_in(&root, 0);
    let victim = &l0[3];
    std::fs::copy(&files_in(&root, 9)[0], victim).expect("test setup");
    expect_restore_failure(&root, &[name_of(victim)], "L0 replaced by the snapshot");
}

// ---------------------------------------------------------------------------
// Outputs and missing replicas

#[test]
fn restore_never_overwrites_an_existing_output() {
    let good = build_good_replica();
    let url = file_url(&good.root);
    let dir = tempdir();
    let out = dir.path().join("existing.db");
    let original = b"precious bytes that are not a database".to_vec();
    std::fs::write(&out, &original).expect("test setup");

    let r = support::run(
        support::replica_cmd()
            .args(["restore", "-o"])
            .arg(&out)
            .arg(&url),
    );
    assert_code(&r, 1, "restore onto an existing file");
    assert_stderr_has(
        &r,
        &out.display().to_string(),
        "restore onto an existing file",
    );
    assert_stderr_has(&r, "--if-db-not-exists", "restore onto an existing file");
    assert_eq!(
        std::fs::read(&out).expect("test setup"),
        original,
        "the existing file changed"
    );
    assert_eq!(dir_listing(dir.path()), ["existing.db"]);

    let r = support::run(
        support::replica_cmd()
            .args(["restore", "--if-db-not-exists", "-o"])
            .arg(&out)
            .arg(&url),
    );
    assert_code(&r, 0, "restore --if-db-not-exists onto an existing file");
    assert_eq!(
        std::fs::read(&out).expect("test setup"),
        original,
        "the existing file changed"
    );
    assert_eq!(dir_listing(dir.path()), ["existing.db"]);

    // A stray -wal without its database would be replayed onto the restored file.
    let fresh = dir.path().join("fresh.db");
    let stray = dir.path().join("fresh.db-wal");
    std::fs::write(&stray, b"stray wal").expect("test setup");
    let r = support::run(
        support::replica_cmd()
            .args(["restore", "-o"])
            .arg(&fresh)
            .arg(&url),
    );
    assert_code(&r, 1, "restore beside a stray -wal");
    assert_stderr_has(&r, "fresh.db-wal", "restore beside a stray -wal");
    assert!(!fresh.exists());
    assert_eq!(std::fs::read(&stray).expect("test setup"), b"stray wal");
}

#[test]
fn restore_from_a_missing_replica() {
    let dir = tempdir();
    let root = dir.path().join("never-replicated");
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).expect("test setup");
    let out = outdir.join("app.db");
    let url = file_url(&root);

    let r = support::run(
        support::replica_cmd()
            .args(["restore", "-o"])
            .arg(&out)
            .arg(&url),
    );
    assert_code(&r, 1, "restore from a missing replica");
    assert_stderr_has(&r, "--if-replica-exists", "restore from a missing replica");
    assert!(!out.exists());

    let r = support::run(
        support::replica_cmd()
            .args(["restore", "--if-replica-exists", "-o"])
            .arg(&out)
            .arg(&url),
    );
    assert_code(&r, 0, "restore --if-replica-exists from a missing replica");
    assert!(!out.exists(), "restore --if-replica-exists created {out:?}");
    assert!(!root.exists(), "restore created the replica directory");
    assert!(
        dir_listing(&outdir).is_empty(),
        "{:?}",
        dir_listing(&outdir)
    );

    // An existing but empty replica directory is the same.
    std::fs::create_dir_all(root.join("ltx").join("0")).expect("test setup");
    let r = support::run(
        support::replica_cmd()
            .args(["restore", "-o"])
            .arg(&out)
            .arg(&url),
    );
    assert_code(&r, 1, "restore from an empty replica");
    assert_stderr_has(&r, "--if-replica-exists", "restore from an empty replica");
    let r = support::run(
        support::replica_cmd()
            .args(["restore", "--if-replica-exists", "-o"])
            .arg(&out)
            .arg(&url),
    );
    assert_code(&r, 0, "restore --if-replica-exists from an empty replica");
    assert!(
        dir_listing(&outdir).is_empty(),
        "{:?}",
        dir_listing(&outdir)
    );
}

/// The `error:` line of a failed command, split at ": " into its causes; a cause
/// stated twice makes the message harder to read, not clearer.
#[track_caller]
fn assert_no_repeated_cause(out: &Output, what: &str) {
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{what}: no `error:` line on stderr\n{out}"));
    let parts: Vec<&str> = line.split(": ").map(str::trim).collect();
    for (i, p) in parts.iter().enumerate() {
        if p.len() >= 12 && parts[..i].contains(p) {
            panic!("{what}: the error message states {p:?} more than once:\n{line}");
        }
    }
}

#[test]
fn error_messages_state_each_cause_once() {
    let good = build_good_replica();

    let work = tempdir();
    let root = good.copy(&work.path().join("rep"));
    let l0 = files_in(&root, 0);
    let len = std::fs::metadata(&l0[2]).expect("test setup").len() as usize;
    flip_byte(&l0[2], len / 2);
    let r = expect_restore_failure(&root, &[name_of(&l0[2])], "corrupt L0");
    assert_no_repeated_cause(&r, "restore of a replica with a corrupt L0");

    let work = tempdir();
    let root = good.copy(&work.path().join("rep"));
    std::fs::remove_file(&files_in(&root, 0)[2]).expect("test setup");
    let r = expect_restore_failure(&root, &[], "gap");
    assert_no_repeated_cause(&r, "restore of a replica with a gap");

    let work = tempdir();
    let root = good.copy(&work.path().join("rep"));
    std::fs::remove_file(&files_in(&root, 9)[0]).expect("test setup");
    let r = expect_restore_failure(&root, &[], "no snapshot");
    assert_no_repeated_cause(&r, "restore of a replica without a snapshot");

    let dir = tempdir();
    let db = dir.path().join("missing").join("app.db");
    let r = support::run(
        support::replica_cmd()
            .arg("replicate")
            .arg(&db)
            .arg(file_url(&dir.path().join("rep"))),
    );
    assert_code(&r, 1, "replicate a database in a missing directory");
    assert_no_repeated_cause(&r, "replicate a database in a missing directory");
}
