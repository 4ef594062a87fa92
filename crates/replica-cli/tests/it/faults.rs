//! Restores on a bad day: through a proxy that answers SlowDown, drops requests before
//! and after the store applied them and cuts response bodies, a restore of a 64 MiB
//! replica succeeds every time and is exact, resuming broken GETs with ranged ones;
//! a restore stopped by SIGTERM leaves nothing beside its output, and the leftover of
//! one killed by SIGKILL is removed by the next.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tempfile::TempDir;

use crate::backends::StoreFixture;
use crate::backends::s3::S3;
use crate::support::{
    Fault, FaultPlan, FaultProxy, Proc, SIGINT, SIGKILL, SIGTERM, dir_listing, integrity_ok,
    new_db, random_blob, replica_cmd, run, tx, user_dump, wait_until,
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
