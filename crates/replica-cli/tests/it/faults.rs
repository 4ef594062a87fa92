//! Restores on a bad day: through a proxy that answers SlowDown, drops requests before
//! and after the store applied them and cuts response bodies, a restore of a 64 MiB
//! replica succeeds every time and is exact, resuming broken GETs with ranged ones;
//! a restore stopped by SIGTERM leaves nothing beside its output, and the leftover of
//! one killed by SIGKILL is removed by the next. On every remote store, replication
//! rides out each fault class, an outage and recovery without losing a commit.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tempfile::TempDir;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::backends::s3::S3;
use crate::backends::{RemoteFixture, StoreFixture, litestream_config};
use crate::support::{
    Fault, FaultPlan, FaultProxy, Proc, SIGINT, SIGKILL, SIGTERM, dir_listing, integrity_ok,
    litestream_cmd, new_db, random_blob, replica_cmd, run, tx, user_dump, wait_until,
    write_batches,
};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A 64 MiB database (incompressible blobs) replicated to S3, with a tail of small
/// commits, so the replica is one large snapshot and many L0 files.
fn big_replica(s3: &S3, dir: &Path) -> (String, u64) {
    let db = dir.join("big.db");
    let conn = new_db(&db);
    conn.execute_batch("CREATE TABLE blobs(id INTEGER PRIMARY KEY, b BLOB)")
        .expect("create blobs");
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..8 {
        tx(&conn, |c| {
            for _ in 0..8 {
                c.execute(
                    "INSERT INTO blobs(b) VALUES (?1)",
                    [random_blob(&mut rng, 1 << 20)],
                )
                .expect("insert blob");
            }
        });
    }
    let url = s3.url("big/app");
    let mut cmd = replica_cmd();
    s3.creds(&mut cmd);
    cmd.args(["replicate", "--sync-interval", "100ms"])
        .arg(&db)
        .arg(&url);
    let mut rep = Proc::spawn("replicate 64 MiB to s3", cmd);
    for i in 0..40 {
        std::thread::sleep(Duration::from_millis(120));
        conn.execute(
            "INSERT INTO blobs(b) VALUES (?1)",
            [random_blob(&mut rng, 2000 + i)],
        )
        .expect("insert");
    }
    let st = rep.stop(SIGINT, TIMEOUT);
    assert_eq!(st.code(), Some(0), "{}", rep.output_report());
    drop(conn);
    (url, digest(&db))
}

/// A digest of the database's logical content (a 64 MiB dump is too large to print).
fn digest(db: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    user_dump(db).hash(&mut h);
    h.finish()
}

/// A proxy in front of the S3 emulator with `pattern` applied to paths containing
/// `only`, and `url` rewritten to go through it.
fn proxied(
    s3: &S3,
    url: &str,
    only: &'static str,
    pattern: &'static [Fault],
    delay: Duration,
) -> (FaultProxy, String) {
    let upstream = s3
        .endpoint()
        .strip_prefix("http://")
        .expect("http endpoint");
    let proxy = FaultProxy::start(
        upstream,
        FaultPlan {
            only,
            pattern,
            delay,
        },
    );
    let via = url.replace(s3.endpoint(), &format!("http://{}", proxy.addr));
    (proxy, via)
}

fn restore_cmd(s3: &S3, url: &str, out: &Path) -> Command {
    let mut cmd = replica_cmd();
    s3.creds(&mut cmd);
    cmd.args(["restore", "-o"]).arg(out).arg(url);
    cmd
}

#[test]
fn restores_through_errors_drops_and_cut_bodies_are_exact() {
    let s3 = S3::new();
    let dir = TempDir::new().expect("tempdir");
    let (url, expected) = big_replica(&s3, dir.path());
    // Six of every ten GETs of LTX files fail, of every kind.
    const PATTERN: &[Fault] = &[
        Fault::None,
        Fault::CutBody,
        Fault::SlowDown,
        Fault::None,
        Fault::DropBefore,
        Fault::CutBody,
        Fault::None,
        Fault::DropAfter,
        Fault::CutBody,
        Fault::None,
    ];
    let (proxy, via_proxy) = proxied(&s3, &url, ".ltx", PATTERN, Duration::ZERO);
    for round in 0..3 {
        let out = dir.path().join(format!("restored-{round}.db"));
        let o = run(&mut restore_cmd(&s3, &via_proxy, &out));
        assert!(
            o.success(),
            "round {round}: restore through faults failed\n{o}"
        );
        assert!(integrity_ok(&out), "round {round}: integrity_check failed");
        assert_eq!(
            digest(&out),
            expected,
            "round {round}: restored content differs"
        );
    }
    let log = proxy.log();
    let faulted = log.iter().filter(|l| l.fault != Fault::None).count();
    assert!(
        faulted * 3 >= log.len(),
        "only {faulted} of {} requests were faulted",
        log.len()
    );
    for kind in [
        Fault::SlowDown,
        Fault::DropBefore,
        Fault::DropAfter,
        Fault::CutBody,
    ] {
        assert!(
            log.iter().any(|l| l.fault == kind),
            "no {} fault was injected",
            kind.name()
        );
    }
    let resumed = log
        .iter()
        .filter(|l| l.method == "GET" && l.path.contains(".ltx"))
        .filter(|l| {
            l.range
                .as_deref()
                .is_some_and(|r| !r.starts_with("bytes=0-"))
        })
        .count();
    assert!(resumed > 0, "no ranged GET resumed a cut body: {log:?}");
}

#[test]
fn an_interrupted_restore_leaves_nothing_and_a_killed_one_is_cleaned_up() {
    let s3 = S3::new();
    let dir = TempDir::new().expect("tempdir");
    let (direct, expected) = big_replica(&s3, dir.path());
    // A slow link, so that the restores are still running when they are stopped.
    let (_proxy, url) = proxied(&s3, &direct, "", &[], Duration::from_millis(300));
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).expect("out dir");
    let out = outdir.join("app.db");
    let work_dir_exists = || {
        std::fs::read_dir(&outdir)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().contains(".restore-"))
            })
            .unwrap_or(false)
    };

    let mut p = Proc::spawn("restore, then SIGTERM", restore_cmd(&s3, &url, &out));
    assert!(
        wait_until(TIMEOUT, work_dir_exists),
        "{}",
        p.output_report()
    );
    p.signal(SIGTERM);
    let st = p.wait_timeout(TIMEOUT).expect("restore exits on SIGTERM");
    assert_eq!(st.code(), Some(1), "{}", p.output_report());
    assert!(
        p.stderr().contains("interrupted by SIGTERM"),
        "{}",
        p.output_report()
    );
    assert!(
        dir_listing(&outdir).is_empty(),
        "left behind: {:?}",
        dir_listing(&outdir)
    );

    let mut p = Proc::spawn("restore, then SIGKILL", restore_cmd(&s3, &url, &out));
    assert!(
        wait_until(TIMEOUT, work_dir_exists),
        "{}",
        p.output_report()
    );
    p.signal(SIGKILL);
    let _ = p.wait_timeout(TIMEOUT);
    assert!(
        !out.exists(),
        "a killed restore must not produce the output"
    );
    let o = run(&mut restore_cmd(&s3, &url, &out));
    assert!(o.success(), "{o}");
    assert!(
        o.stderr
            .contains("removed the work directory of an interrupted restore"),
        "{o}"
    );
    assert_eq!(dir_listing(&outdir), vec!["app.db".to_owned()]);
    assert_eq!(digest(&out), expected);
}

/// Scenario, on every remote store: `replicate` runs through a link that injects
/// each fault class of its protocol in turn while a writer commits, then a total
/// outage, then recovery. The process never exits; once the link heals it catches
/// up; the final restore equals the source, by `replica` and by Litestream 0.5.17.
///
/// Commits made during the outage are uploaded late: a `--timestamp` restore to a
/// moment after them but before their upload includes them (the planner reads the
/// LTX time, never the store's upload time), and Litestream agrees.
pub fn replication_survives_faults_and_an_outage(f: &dyn RemoteFixture) {
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = new_db(&db);
    write_batches(&conn, 3, 50);
    let link = f.faulty_link();
    let direct = f.url("faults/app");
    let via = direct.replace(&f.upstream(), link.addr());
    assert_ne!(via, direct, "the replica URL must go through the link");
    let mut cmd = with_creds(f, replica_cmd());
    cmd.args(["replicate", "--sync-interval", "100ms"])
        .arg(&db)
        .arg(&via);
    let mut rep = Proc::spawn(&format!("replicate through faults to {}", f.scheme()), cmd);
    let commit_for = |d: Duration| {
        let until = std::time::Instant::now() + d;
        while std::time::Instant::now() < until {
            write_batches(&conn, 1, 10);
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    for class in link.classes() {
        link.set(class);
        commit_for(Duration::from_millis(1500));
        assert!(
            rep.is_running(),
            "replicate exited during \"{class}\"\n{}",
            rep.output_report()
        );
    }

    link.outage();
    commit_for(Duration::from_millis(1000));
    let during_outage = user_dump(&db);
    // Capture cuts a file within a sync interval of a commit: by now every commit
    // above is in a spooled file whose LTX time is before `at`.
    std::thread::sleep(Duration::from_millis(500));
    let at = OffsetDateTime::now_utc();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        rep.is_running(),
        "replicate exited during the outage\n{}",
        rep.output_report()
    );
    link.heal();
    // The writer waits until the late uploads landed, so no later commit can share
    // their object.
    let mut last_probe = String::new();
    let mut probes = 0;
    let caught_up = wait_until(Duration::from_secs(60), || {
        probes += 1;
        let probe = dir.path().join(format!("probe-{probes}.db"));
        let mut cmd = with_creds(f, replica_cmd());
        let o = run(cmd.args(["-q", "restore", "-o"]).arg(&probe).arg(&direct));
        if !o.success() {
            last_probe = format!("the last restore failed\n{o}");
            return false;
        }
        let got = user_dump(&probe);
        last_probe = format!(
            "the last restore had {} rows, the source {} during the outage",
            got.len(),
            during_outage.len()
        );
        got == during_outage
    });
    assert!(
        caught_up,
        "the replica never caught up after the outage ({}); {last_probe}\n{}",
        link.summary(),
        rep.output_report()
    );
    commit_for(Duration::from_millis(500));
    let st = rep.stop(SIGINT, TIMEOUT);
    let report = rep.output_report();
    assert_eq!(st.code(), Some(0), "replicate exited with {st}\n{report}");
    assert!(!report.contains("panicked"), "a panic on the way\n{report}");
    drop(conn);
    let source = user_dump(&db);

    let ours = dir.path().join("ours.db");
    let mut cmd = with_creds(f, replica_cmd());
    let o = run(cmd.args(["restore", "-o"]).arg(&ours).arg(&direct));
    assert!(o.success(), "replica restore failed\n{o}");
    assert!(
        integrity_ok(&ours),
        "replica restore: integrity_check failed"
    );
    assert_eq!(
        user_dump(&ours),
        source,
        "replica restore differs from the source"
    );

    let cfg = litestream_config(f, dir.path(), &db, "faults/app");
    let litestream_restore = |out: &Path, extra: &[&str]| {
        let mut cmd = with_creds(f, litestream_cmd());
        f.litestream_env(&mut cmd);
        run(cmd
            .args(["restore", "-config"])
            .arg(&cfg)
            .args(extra)
            .arg("-o")
            .arg(out)
            .arg(&db))
    };
    let theirs = dir.path().join("theirs.db");
    let o = litestream_restore(&theirs, &[]);
    assert!(o.success(), "litestream restore failed\n{o}");
    assert_eq!(
        user_dump(&theirs),
        source,
        "litestream restore differs from the source"
    );

    let ts = at.format(&Rfc3339).expect("format");
    let ours_at = dir.path().join("ours-at.db");
    let mut cmd = with_creds(f, replica_cmd());
    let o = run(cmd
        .args(["restore", "--timestamp", &ts, "-o"])
        .arg(&ours_at)
        .arg(&direct));
    assert!(o.success(), "replica restore --timestamp {ts} failed\n{o}");
    assert!(
        user_dump(&ours_at) == during_outage,
        "replica restore --timestamp {ts} (after the outage's commits, before their \
         upload) does not give the state at that time"
    );
    let theirs_at = dir.path().join("theirs-at.db");
    let o = litestream_restore(&theirs_at, &["-timestamp", &ts]);
    assert!(
        o.success(),
        "litestream restore -timestamp {ts} failed\n{o}"
    );
    assert!(
        user_dump(&theirs_at) == during_outage,
        "litestream restore -timestamp {ts} disagrees"
    );
    eprintln!("{}: {}", f.scheme(), link.summary());
}

fn with_creds(f: &dyn StoreFixture, mut cmd: Command) -> Command {
    f.creds(&mut cmd);
    cmd
}

fn pod_app() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pod_app.py")
}

fn rows_of(db: &Path, pod: &str) -> i64 {
    // Read-only: opening must never create the file a boot restore is waiting to
    // write.
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| {
            c.busy_timeout(Duration::from_secs(5))?;
            c.query_row("SELECT count(*) FROM rows WHERE pod = ?1", [pod], |r| {
                r.get(0)
            })
        })
        .unwrap_or(0)
}

/// The store is down when `replicate --config --exec` starts. With every database
/// on local disk, the service starts at once and what it commits during the
/// outage is replicated once the store returns. A missing database waits for the
/// store (saying so), is restored when it answers, and only then does the service
/// start.
#[test]
fn the_service_starts_while_the_store_is_down() {
    let s3 = S3::new();
    let dir = TempDir::new().expect("tempdir");
    let direct = s3.url("boot");
    let (proxy, via) = proxied(&s3, &direct, "", FaultPlan::OUTAGE.pattern, Duration::ZERO);
    let config = |name: &str, dbs: &[&str]| {
        let path = dir.path().join(name);
        let list: String = dbs.iter().map(|d| format!("  - {d}\n")).collect();
        std::fs::write(
            &path,
            format!(
                "replication:\n  enabled: true\n  replica_url: {via}\n  sync_interval: 100ms\n  lease_wait: 2m\ndatabases:\n{list}"
            ),
        )
        .expect("writing the config");
        path
    };
    let replicate = |cfg: &Path, db: &Path, pod: &str| {
        let mut cmd = replica_cmd();
        s3.creds(&mut cmd);
        cmd.args(["replicate", "--config"]).arg(cfg).args([
            "--exec",
            &format!("python3 {} {} {pod}", pod_app().display(), db.display()),
        ]);
        Proc::spawn(&format!("replicate --exec ({pod})"), cmd)
    };

    // Every database present: the service starts while the store is down.
    std::fs::create_dir(dir.path().join("data")).expect("data dir");
    let (a, b) = (dir.path().join("data/a.db"), dir.path().join("data/b.db"));
    for db in [&a, &b] {
        let conn = new_db(db);
        write_batches(&conn, 2, 20);
    }
    let cfg = config("present.yml", &["./data/a.db", "./data/b.db"]);
    let mut rep = replicate(&cfg, &a, "early");
    assert!(
        wait_until(Duration::from_secs(20), || rows_of(&a, "early") > 50),
        "the service did not start while the store was down\n{}",
        rep.output_report()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(rep.is_running(), "{}", rep.output_report());
    proxy.set_plan(FaultPlan::HEALTHY);
    assert!(
        wait_until(TIMEOUT, || rep.is_replicating()),
        "replication never started once the store answered\n{}",
        rep.output_report()
    );
    std::thread::sleep(Duration::from_secs(1));
    let st = rep.stop(SIGTERM, TIMEOUT);
    assert_eq!(st.code(), Some(0), "{}", rep.output_report());
    for (db, name) in [(&a, "a"), (&b, "b")] {
        let out = dir.path().join(format!("{name}-restored.db"));
        let mut cmd = replica_cmd();
        s3.creds(&mut cmd);
        let o = run(cmd
            .args(["restore", "-o"])
            .arg(&out)
            .arg(direct.replace("/boot?", &format!("/boot/{name}?"))));
        assert!(o.success(), "{o}");
        assert_eq!(
            user_dump(&out),
            user_dump(db),
            "{name}: the restore differs from what the service committed"
        );
    }

    // A missing database: the boot restore waits for the store, then the service.
    proxy.set_plan(FaultPlan::OUTAGE);
    std::fs::create_dir(dir.path().join("fresh")).expect("fresh dir");
    let fresh = dir.path().join("fresh/a.db");
    let cfg = config("missing.yml", &["./fresh/a.db"]);
    let mut rep = replicate(&cfg, &fresh, "late");
    assert!(
        wait_until(TIMEOUT, || rep.stderr().contains("store is not answering")),
        "the wait for the store is not reported\n{}",
        rep.output_report()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !fresh.exists(),
        "the service started (or a database was created) before the restore"
    );
    proxy.set_plan(FaultPlan::HEALTHY);
    assert!(
        wait_until(TIMEOUT, || rows_of(&fresh, "late") > 10),
        "the service did not start once the store answered\n{}",
        rep.output_report()
    );
    let st = rep.stop(SIGTERM, TIMEOUT);
    assert_eq!(st.code(), Some(0), "{}", rep.output_report());
    assert_eq!(
        rows_of(&fresh, "early"),
        rows_of(&a, "early"),
        "the boot restore lost rows the first service committed during the outage\n{}",
        rep.output_report()
    );
}

/// The same for one database on the command line: present locally, it gets its
/// service at once while the store is down, and everything reaches the replica.
#[test]
fn a_single_database_starts_its_service_while_the_store_is_down() {
    let s3 = S3::new();
    let dir = TempDir::new().expect("tempdir");
    let direct = s3.url("single/a");
    let (proxy, via) = proxied(&s3, &direct, "", FaultPlan::OUTAGE.pattern, Duration::ZERO);
    let db = dir.path().join("a.db");
    write_batches(&new_db(&db), 2, 20);
    let mut cmd = replica_cmd();
    s3.creds(&mut cmd);
    cmd.args(["replicate", "--sync-interval", "100ms", "--exec"])
        .arg(format!(
            "python3 {} {} solo",
            pod_app().display(),
            db.display()
        ))
        .arg(&db)
        .arg(&via);
    let mut rep = Proc::spawn("replicate one database --exec", cmd);
    assert!(
        wait_until(Duration::from_secs(20), || rows_of(&db, "solo") > 50),
        "the service did not start while the store was down\n{}",
        rep.output_report()
    );
    proxy.set_plan(FaultPlan::HEALTHY);
    assert!(
        wait_until(TIMEOUT, || rep.is_replicating()),
        "replication never started once the store answered\n{}",
        rep.output_report()
    );
    let st = rep.stop(SIGTERM, TIMEOUT);
    assert_eq!(st.code(), Some(0), "{}", rep.output_report());
    let out = dir.path().join("restored.db");
    let mut cmd = replica_cmd();
    s3.creds(&mut cmd);
    let o = run(cmd.args(["restore", "-o"]).arg(&out).arg(&direct));
    assert!(o.success(), "{o}");
    assert_eq!(user_dump(&out), user_dump(&db), "the restore differs");
}
