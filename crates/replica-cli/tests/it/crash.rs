//! Crash and outage tests: the replicator is SIGKILLed at random moments while the
//! application keeps committing, and the replica store disappears for a while. Every
//! restore must be a consistent prefix of the committed history, and once the
//! replicator is allowed to flush, the replica must hold every committed row.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::{
    self, Proc, SIGKILL, file_url, ltx_name_range, max_txid_of, replicator_cmd, stop_clean,
    try_ltx_list,
};

const LONG: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// The application: a writer thread committing numbered rows.

/// The payload of row `n`: deterministic, so a restored row can be checked for
/// torn or stale content, and of varying length (200..1000 bytes) so that the
/// database grows by several pages per second.
fn payload(n: u64) -> String {
    let len = 200 + (n.wrapping_mul(7919) % 800) as usize;
    let unit = format!("<{n}>");
    unit.repeat(len / unit.len() + 1)[..len].to_string()
}

#[derive(Debug, Default)]
struct WriterState {
    /// Highest n committed so far.
    last: AtomicU64,
    /// Committed transactions.
    commits: AtomicU64,
    /// The highest n of every committed transaction, ascending: a consistent
    /// restore ends exactly at one of these.
    boundaries: Mutex<Vec<u64>>,
}

impl WriterState {
    fn boundaries(&self) -> Vec<u64> {
        self.boundaries.lock().expect("boundaries lock").clone()
    }
}

struct Writer {
    stop: Arc<AtomicBool>,
    state: Arc<WriterState>,
    handle: Option<JoinHandle<Result<(), String>>>,
}

impl Writer {
    /// Starts committing transactions of 1..=3 rows each into `db`, which must
    /// already hold the schema of [`create_schema`].
    fn start(db: &Path, seed: u64, pause: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(WriterState::default());
        let (db, stop2, state2) = (db.to_path_buf(), stop.clone(), state.clone());
        let handle = std::thread::Builder::new()
            .name("app-writer".into())
            .spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut conn = support::open_wal_db(&db);
                // The application checkpoints too, but rarely enough that a restarted
                // replicator sometimes finds the WAL as it left it (resume from the
                // spool) and sometimes reset (new snapshot).
                conn.pragma_update(None, "wal_autocheckpoint", 3000)
                    .map_err(|e| format!("wal_autocheckpoint: {e}"))?;
                let mut n = 0u64;
                while !stop2.load(Ordering::Acquire) {
                    let rows = rng.random_range(1..=3u64);
                    let tx = conn
                        .transaction()
                        .map_err(|e| format!("begin after n={n}: {e}"))?;
                    for i in 1..=rows {
                        let m = n + i;
                        tx.execute(
                            "INSERT INTO t(n, payload) VALUES (?1, ?2)",
                            rusqlite::params![m as i64, payload(m)],
                        )
                        .map_err(|e| format!("insert n={m}: {e}"))?;
                    }
                    tx.execute(
                        "UPDATE meta SET last = ?1, txns = txns + 1 WHERE id = 1",
                        [(n + rows) as i64],
                    )
                    .map_err(|e| format!("update meta at n={}: {e}", n + rows))?;
                    tx.commit()
                        .map_err(|e| format!("commit of n={}..={}: {e}", n + 1, n + rows))?;
                    n += rows;
                    state2.boundaries.lock().expect("boundaries lock").push(n);
                    state2.last.store(n, Ordering::Release);
                    state2.commits.fetch_add(1, Ordering::AcqRel);
                    if !pause.is_zero() {
                        std::thread::sleep(pause);
                    }
                }
                Ok(())
            })
            .expect("spawning the writer thread");
        Writer {
            stop,
            state,
            handle: Some(handle),
        }
    }

    /// Panics if the writer thread has stopped on an error.
    #[track_caller]
    fn assert_alive(&mut self, ctx: &str) {
        if self.handle.as_ref().is_some_and(|h| h.is_finished()) {
            let r = self.handle.take().expect("writer handle").join();
            panic!("{ctx}: the application's writer stopped: {r:?}");
        }
    }

    /// Stops the writer and returns the highest committed n.
    #[track_caller]
    fn finish(&mut self, ctx: &str) -> u64 {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("{ctx}: the application's writer failed: {e}"),
                Err(_) => panic!("{ctx}: the application's writer panicked"),
            }
        }
        self.state.last.load(Ordering::Acquire)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn create_schema(db: &Path) {
    let conn = support::open_wal_db(db);
    conn.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, n INTEGER NOT NULL UNIQUE, payload TEXT NOT NULL);
         CREATE TABLE meta(id INTEGER PRIMARY KEY, last INTEGER NOT NULL, txns INTEGER NOT NULL);
         INSERT INTO meta VALUES (1, 0, 0);",
    )
    .expect("creating the schema");
}

// ---------------------------------------------------------------------------
// The replicator and the replica.

fn spawn_replicator(db: &Path, url: &str, name: &str) -> Proc {
    spawn_replicator_with(db, url, name, &[])
}

/// `wait_started` reads the replicator's info-level log.
fn spawn_replicator_with(db: &Path, url: &str, name: &str, extra: &[&str]) -> Proc {
    let mut cmd = replicator_cmd(db, url, extra);
    cmd.env("REPLICA_LOG", "info");
    Proc::spawn(name, cmd)
}

/// Restores `url` into `out`; panics with the command's output unless it exits 0
/// and creates `out`.
#[track_caller]
fn restore(url: &str, out: &Path, ctx: &str) {
    let res = support::run(
        support::replica_cmd()
            .args(["restore", "-o"])
            .arg(out)
            .arg(url)
            .args(["--integrity-check", "full"]),
    );
    assert!(res.success(), "{ctx}: restore from {url} failed:\n{res}");
    assert!(
        out.is_file(),
        "{ctx}: restore exited 0 but {} does not exist:\n{res}",
        out.display()
    );
}

/// Checks that the restored database at `path` is a consistent prefix of what the
/// writer committed: integrity ok, rows n = 1..=k with no holes and their exact
/// payloads, `meta` from the same transaction as row k, and k the end of a
/// committed transaction. Returns k.
#[track_caller]
fn check_prefix(path: &Path, boundaries: &[u64], ctx: &str) -> u64 {
    let ic = support::integrity_check(path);
    assert_eq!(ic, ["ok"], "{ctx}: restored database is not sound");
    let conn = support::open_read_only(path);
    let mut stmt = conn
        .prepare("SELECT n, payload FROM t ORDER BY n")
        .expect("preparing the row query");
    let rows: Vec<(i64, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|rows| rows.collect())
        .unwrap_or_else(|e| panic!("{ctx}: reading rows: {e}"));
    for (i, (n, p)) in rows.iter().enumerate() {
        let want = i as i64 + 1;
        assert_eq!(
            *n,
            want,
            "{ctx}: restored rows are not 1..=k: position {i} holds n={n} (rows: {})",
            rows.len()
        );
        assert!(
            *p == payload(*n as u64),
            "{ctx}: row n={n} has a wrong payload ({} bytes)",
            p.len()
        );
    }
    let k = rows.len() as u64;
    let (last, txns): (i64, i64) = conn
        .query_row("SELECT last, txns FROM meta WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap_or_else(|e| panic!("{ctx}: reading meta: {e}"));
    assert_eq!(
        last as u64, k,
        "{ctx}: meta.last is not the highest restored n: a transaction is torn"
    );
    if k > 0 {
        let idx = boundaries.binary_search(&k).unwrap_or_else(|_| {
            panic!(
                "{ctx}: k={k} is not the end of a committed transaction: a transaction is partially restored"
            )
        });
        assert_eq!(
            txns as usize,
            idx + 1,
            "{ctx}: meta.txns does not match the number of transactions up to n={k}"
        );
    } else {
        assert_eq!(txns, 0, "{ctx}: no rows but meta.txns={txns}");
    }
    k
}

/// Restores `url` and checks it holds exactly everything committed: 1..=last,
/// and the same logical content as the source.
#[track_caller]
fn check_complete(url: &str, out: &Path, src: &Path, writer: &Writer, last: u64, ctx: &str) {
    restore(url, out, ctx);
    let k = check_prefix(out, &writer.state.boundaries(), ctx);
    assert_eq!(
        k, last,
        "{ctx}: the replica lost committed rows: it restores 1..={k}, but 1..={last} were committed"
    );
    let (a, b) = (support::dump(src), support::dump(out));
    if a != b {
        let first = a
            .iter()
            .zip(b.iter())
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len()));
        panic!(
            "{ctx}: restored database differs from the source (source {} lines, restored {} lines, first difference at line {first}: {:?} vs {:?})",
            a.len(),
            b.len(),
            a.get(first),
            b.get(first)
        );
    }
}

/// Waits until the replicator has logged that it is running, so a signal reaches
/// its handlers rather than the default action.
#[track_caller]
fn wait_started(p: &mut Proc, ctx: &str) {
    let ok = support::wait_until(LONG, || p.is_replicating() || !p.is_running());
    assert!(
        ok && p.is_running(),
        "{ctx}: the replicator did not start (or exited: {:?})\n{}",
        p.try_status(),
        p.output_report()
    );
}

fn seed_from_env() -> u64 {
    match std::env::var("REPLICA_CRASH_SEED") {
        Ok(s) => s.parse().expect("REPLICA_CRASH_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(42),
    }
}

// ---------------------------------------------------------------------------

#[test]
fn sigkill_at_random_moments_never_loses_or_tears_transactions() {
    let seed = seed_from_env();
    eprintln!("crash test seed: {seed} (rerun with REPLICA_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();

    let dir = tempfile::TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    let root = dir.path().join("replica");
    let url = file_url(&root);
    create_schema(&db);
    let mut writer = Writer::start(&db, seed ^ 0x5eed, Duration::from_millis(1));

    const KILLS: usize = 10;
    let mut restores = 0;
    let mut last_k = 0;
    for kill in 1..=KILLS {
        let ctx = format!("seed {seed}, kill {kill}/{KILLS}");
        let mut rep = spawn_replicator(&db, &url, &format!("replicate#{kill}"));
        // A restore while a replicator runs (and uploads) must be consistent too.
        if kill % 4 == 0 {
            wait_started(&mut rep, &ctx);
            let listed =
                support::wait_until(LONG, || try_ltx_list(&url).is_some_and(|f| !f.is_empty()));
            assert!(
                listed,
                "{ctx}: replica still empty\n{}",
                rep.output_report()
            );
            let out = dir.path().join(format!("live-{kill}.db"));
            restore(&url, &out, &format!("{ctx}, restore while running"));
            let k = check_prefix(
                &out,
                &writer.state.boundaries(),
                &format!("{ctx}, restore while running"),
            );
            eprintln!("{ctx}: restore while running: k={k}");
            restores += 1;
        }
        let delay = Duration::from_millis(rng.random_range(50..=700));
        std::thread::sleep(delay);
        assert!(
            rep.is_running(),
            "{ctx}: the replicator exited by itself ({:?}) before being killed",
            rep.try_status()
        );
        let st = rep.stop(SIGKILL, LONG);
        assert_eq!(
            st.code(),
            None,
            "{ctx}: expected death by SIGKILL, got {st}"
        );
        writer.assert_alive(&ctx);
        let err = rep.stderr();
        eprintln!(
            "{ctx}: killed after {delay:?}; writer at n={}; log: {} resumed, {} snapshots, {} warnings",
            writer.state.last.load(Ordering::Acquire),
            err.matches("resuming replication").count(),
            err.matches("snapshot spooled").count(),
            err.matches("WARN").count(),
        );
        for l in err
            .lines()
            .filter(|l| l.contains("snapshot") || l.contains("WARN"))
        {
            eprintln!("    {l}");
        }

        // A restore of what a crashed replicator left must be consistent.
        if kill % 3 == 2 {
            let files = try_ltx_list(&url)
                .unwrap_or_else(|| panic!("{ctx}: `replica ltx` failed on the replica"));
            if files.is_empty() {
                eprintln!("{ctx}: replica still empty, no intermediate restore");
                continue;
            }
            let out = dir.path().join(format!("after-kill-{kill}.db"));
            restore(&url, &out, &format!("{ctx}, restore after kill"));
            let k = check_prefix(
                &out,
                &writer.state.boundaries(),
                &format!("{ctx}, restore after kill"),
            );
            assert!(
                k >= last_k,
                "{ctx}: the replica went backwards: restored 1..={k}, an earlier restore had 1..={last_k}"
            );
            last_k = k;
            eprintln!(
                "{ctx}: restore after kill: k={k} (replica max TXID {:x})",
                max_txid_of(&files)
            );
            restores += 1;
        }
        // Stay down a while: the application's own checkpoints may reset the WAL
        // meanwhile, which the next start must notice.
        std::thread::sleep(Duration::from_millis(rng.random_range(0..=400)));
    }
    assert!(restores >= 3, "only {restores} intermediate restores ran");

    let ctx = format!("seed {seed}, final");
    let last = writer.finish(&ctx);
    let commits = writer.state.commits.load(Ordering::Acquire);
    assert!(
        last > 100,
        "{ctx}: the writer committed only {last} rows; the test did not exercise much"
    );
    let mut rep = spawn_replicator(&db, &url, "replicate#final");
    wait_started(&mut rep, &ctx);
    stop_clean(&mut rep);
    let out = dir.path().join("final.db");
    check_complete(&url, &out, &db, &writer, last, &ctx);
    eprintln!(
        "{ctx}: {last} rows in {commits} transactions restored after {KILLS} kills in {:?}",
        started.elapsed()
    );
}

/// The pending (not yet uploaded) spool files: how many, their bytes, and the
/// highest TXID they hold.
fn pending_spool(db: &Path) -> (usize, u64, u64) {
    let name = db
        .file_name()
        .expect("database file name")
        .to_string_lossy();
    let pending = db
        .with_file_name(format!(".{name}-replica"))
        .join("pending");
    let (mut n, mut bytes, mut max) = (0, 0, 0);
    let mut stack: Vec<PathBuf> = vec![pending];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "ltx") {
                n += 1;
                bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                if let Some((_, t)) = ltx_name_range(&e.file_name().to_string_lossy()) {
                    max = max.max(t);
                }
            }
        }
    }
    (n, bytes, max)
}

#[test]
fn store_outage_never_blocks_the_app_and_never_loses_frames() {
    let seed = seed_from_env();
    eprintln!("outage test seed: {seed}");
    let dir = tempfile::TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    let root = dir.path().join("replica");
    let aside = dir.path().join("replica.aside");
    let url = file_url(&root);
    create_schema(&db);
    let mut writer = Writer::start(&db, seed, Duration::from_millis(2));
    // A small spool limit, so that the outage crosses it.
    let mut rep = spawn_replicator_with(&db, &url, "replicate", &["--spool-limit", "64KiB"]);
    wait_started(&mut rep, "before the outage");

    // Some history reaches the replica before the outage.
    let mut before = 0;
    let ok = support::wait_until(LONG, || {
        before = try_ltx_list(&url).map(|f| max_txid_of(&f)).unwrap_or(0);
        before >= 3
    });
    assert!(
        ok,
        "the replica never reached TXID 3 (at {before:x})\n{}",
        rep.output_report()
    );

    // The outage: the replica root becomes a regular file, so every upload fails.
    std::fs::rename(&root, &aside).expect("moving the replica aside");
    let blocker = b"not a directory: the store is down\n";
    std::fs::write(&root, blocker).expect("creating the blocking file");
    let commits_at_outage = writer.state.commits.load(Ordering::Acquire);
    let (_, _, spooled_at_outage) = pending_spool(&db);
    eprintln!(
        "outage starts: replica at TXID {before:x}, {commits_at_outage} commits, spool up to TXID {spooled_at_outage:x}"
    );

    // Capture goes on into the spool, which grows...
    let grew = support::wait_until(LONG, || {
        pending_spool(&db).2 >= spooled_at_outage.max(before) + 20
    });
    assert!(
        grew,
        "the spool did not grow during the outage ({:?})\n{}",
        pending_spool(&db),
        rep.output_report()
    );
    // ...past its limit, which is reported...
    let warned = support::wait_until(LONG, || rep.stderr().contains("spool is over its limit"));
    assert!(
        warned,
        "no warning about the spool limit\n{}",
        rep.output_report()
    );
    // ...but merged in place, so it holds about one image of the changed pages rather
    // than a file per sync.
    let (files, bytes, _) = pending_spool(&db);
    let db_bytes = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    assert!(
        files <= 70 && bytes <= 2 * db_bytes + (4 << 20),
        "the spool is not bounded: {files} files, {bytes} bytes for a {db_bytes}-byte database"
    );
    // ...and the application keeps committing, whatever happens to uploads.
    let c1 = writer.state.commits.load(Ordering::Acquire);
    let progressed = support::wait_until(LONG, || {
        writer.state.commits.load(Ordering::Acquire) >= c1 + 200
    });
    writer.assert_alive("during the outage");
    assert!(
        progressed,
        "the application's commits stalled during the store outage ({} commits, {} at outage start)",
        writer.state.commits.load(Ordering::Acquire),
        commits_at_outage
    );
    assert!(
        rep.is_running(),
        "the replicator exited during the outage ({:?})\n{}",
        rep.try_status(),
        rep.output_report()
    );
    assert_eq!(
        std::fs::read(&root).ok().as_deref(),
        Some(&blocker[..]),
        "the replicator touched the regular file standing in for its replica root"
    );
    let during = writer.state.commits.load(Ordering::Acquire) - commits_at_outage;
    eprintln!(
        "during the outage: {during} commits, spool {:?}",
        pending_spool(&db)
    );

    // Recovery: the store comes back with its previous contents.
    std::fs::remove_file(&root).expect("removing the blocking file");
    std::fs::rename(&aside, &root).expect("moving the replica back");
    let mut now = 0;
    let recovered = support::wait_until(LONG, || {
        now = try_ltx_list(&url).map(|f| max_txid_of(&f)).unwrap_or(0);
        now > before + 5
    });
    assert!(
        recovered,
        "uploads did not resume after the outage (replica at TXID {now:x}, {before:x} before it)\n{}",
        rep.output_report()
    );
    writer.assert_alive("after the outage");
    // Keep committing a little past the recovery.
    let c2 = writer.state.commits.load(Ordering::Acquire);
    assert!(support::wait_until(LONG, || {
        writer.state.commits.load(Ordering::Acquire) >= c2 + 50
    }));

    let last = writer.finish("after the outage");
    stop_clean(&mut rep);
    assert!(
        rep.stderr().contains("spool back under its limit"),
        "no notice that the spool shrank back\n{}",
        rep.output_report()
    );
    assert_eq!(
        pending_spool(&db).0,
        0,
        "a clean stop left files in the spool"
    );
    let out = dir.path().join("restored.db");
    check_complete(&url, &out, &db, &writer, last, "after the outage");
    eprintln!("outage test: {last} rows restored");
}
