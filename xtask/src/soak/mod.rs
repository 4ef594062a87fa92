//! `cargo xtask soak`: the application writes at a steady rate and checkpoints now
//! and then, the replicator is killed and restarted now and then, and restores are
//! checked every minute against exactly what the application had committed.
//!
//! - `workload.py` is the application (and the checker of restored databases): every
//!   commit is a function of (seed, k), and its journal says when each commit began and
//!   returned, so the state after any commit k can be recognised exactly.
//! - `replicator.rs` runs `replica replicate` and remembers when each run was up, which
//!   says how fresh the replica must be at a given moment.
//! - `check.rs` restores and verifies; `measure.rs` watches the WAL, the spool and the
//!   replica; the child processes and Ctrl-C are `crate::proc`'s.

mod check;
mod journal;
mod measure;
mod replicator;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::proc::{self, Proc, Signal};
use crate::{litestream, paths, util};
use check::{Checker, Verdict, secs};
use journal::Commits;
use replicator::{Ended, Features, LAG_BOUND, Replicator};

pub const HELP: &str = "
Runs the application (a Python sqlite3 writer, ~200 commits/s: inserts, updates,
deletes, sometimes large transactions, its own PASSIVE/FULL/RESTART/TRUNCATE
checkpoints at random, SQLite's autocheckpoint on and off) against `replica
replicate` to a file:// replica in a temporary directory, built first with
`cargo build --release -p replica-cli`. The replicator is stopped every 30-180 s
(3 in 4 times SIGKILL, else SIGTERM, which must exit 0 having flushed every
commit) and restarted after 0.1-10 s. If `replica replicate --help` lists
--levels and --l0-retention, `--levels 5s,20s,60s --l0-retention 30s` is passed.

Every minute the latest state and a point in time inside the retention window
are restored, and each must be exactly the state after some commit k: intact,
no gap, no torn transaction; fresh (k includes every commit older than 5 s while
a replicator is up); and, for the point in time, no commit that began after it.
Retention is 5 minutes, or a quarter of the run if shorter (at least 1 minute),
so that even a short soak deletes history. The WAL must stay under 64 MiB and
the spool under five database images plus its shipped L0 copies plus 16 MiB. At the end the writer stops,
the replicator flushes (SIGTERM), and the restore must equal the database, as
must Litestream 0.5.17's restore of the replica (skipped if it is unavailable).

With --faults the replica is on S3 instead (a private moto server) and every
request goes through a proxy that breaks 5% of them at random (503 SlowDown,
500, 429, dropped before the store sees them, applied with the response lost,
GET bodies cut in half) and drops everything during outages of 5-60 s, one
every 1-3 minutes. The replicator is not stopped or started during an outage;
freshness is not required during one, nor for 40 s after it (the shipper's
longest backoff and the catch-up). Restores and Litestream's check read the
store directly. The summary counts the faults by kind.

Prints a summary; exits 1 on any failure (the directory is then kept and its
path printed), 130 if interrupted (Ctrl-C stops the writer and the replicator).

OPTIONS:
    --minutes N    how long to run (required)
    --seed S       seed of the workload and of the kill schedule (default: from
                   the clock; printed, so a run can be repeated)
    --keep         keep the temporary directory after a successful run
    --faults       replicate to S3 through the fault-injecting proxy (above)
";

const WORKLOAD: &str = include_str!("workload.py");
/// The application's commit rate.
const RATE: u32 = 200;
const ROUND_EVERY: Duration = Duration::from_secs(60);
/// A replicator run lasts this long (seconds) before it is stopped...
const RUN_SECS: (u64, u64) = (30, 180);
/// ...and stays down this long (milliseconds) while the writer goes on: half the time
/// briefly, so that the next run often finds the WAL as it was and resumes from the
/// spool, otherwise long enough for the application's checkpoints to reset the WAL.
const DOWN_MS_SHORT: (u64, u64) = (100, 1_000);
const DOWN_MS_LONG: (u64, u64) = (1_000, 10_000);
/// The WAL is checkpointed by the replicator every 1000 pages (~4 MB) and by the
/// application now and then; 64 MiB means checkpoints have stopped working.
const MAX_WAL: u64 = 64 << 20;
/// The spool's bound (ARCHITECTURE.md, "The spool is bounded"): pending files of at
/// most two database images (the changed pages, merged during an outage, and one
/// unsent snapshot), work files of at most three more (a merge's output, a snapshot
/// being written, a compaction's output), the shipped L0 copies awaiting compaction,
/// and this much for the rest (the state, partial files).
const SPOOL_DB_IMAGES: u64 = 5;
const SPOOL_SLACK: u64 = 16 << 20;

/// Requests broken at random in a `--faults` soak, per million.
const FAULT_RATE_PPM: u64 = 50_000;
/// Time between outages, and their length, in seconds.
const OUTAGE_EVERY: (u64, u64) = (60, 180);
const OUTAGE_SECS: (u64, u64) = (5, 60);

#[derive(Debug)]
struct Options {
    minutes: u64,
    seed: u64,
    keep: bool,
    faults: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut minutes = None;
    let mut seed = None;
    let mut keep = false;
    let mut faults = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<u64> {
            let v = it.next().with_context(|| format!("{name} needs a value"))?;
            v.parse()
                .with_context(|| format!("{name} {v:?}: expected a whole number"))
        };
        match a.as_str() {
            "--minutes" => minutes = Some(value("--minutes")?),
            "--seed" => seed = Some(value("--seed")?),
            "--keep" => keep = true,
            "--faults" => faults = true,
            other => bail!("unknown option `{other}` (see `cargo xtask help soak`)"),
        }
    }
    let minutes = match minutes {
        Some(0) => bail!("--minutes must be at least 1"),
        Some(m) => m,
        None => bail!("--minutes N is required (see `cargo xtask help soak`)"),
    };
    Ok(Options {
        minutes,
        seed: seed.unwrap_or_else(|| now_ns() ^ u64::from(std::process::id())),
        keep,
        faults,
    })
}

/// Wall-clock time in ns since the epoch: the journal's clock.
pub fn now_ns() -> u64 {
    check::system_ns(std::time::SystemTime::now())
}

/// splitmix64: the kill schedule and restore targets, reproducible from the seed.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn range(&mut self, (lo, hi): (u64, u64)) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// What the summary reports.
#[derive(Debug, Default)]
struct Tally {
    commits: u64,
    kills: BTreeMap<&'static str, u64>,
    restarts: u64,
    latest_ok: u64,
    flush_ok: u64,
    pitr_ok: u64,
    /// How far the latest restore was behind the writer, while a replicator was up.
    max_latest_lag_ns: u64,
    /// How far a point-in-time restore was behind its target, inside an up period.
    max_pitr_lag_ns: u64,
    max_wal: u64,
    /// The spool at its largest.
    max_spool: measure::Spool,
    /// The database's size when the spool peaked, and that peak's bound.
    max_spool_db: u64,
    max_db: u64,
    max_replica_files: u64,
    max_replica_bytes: u64,
    final_levels: BTreeMap<u8, measure::Level>,
    litestream: String,
    failures: Vec<String>,
}

#[derive(Debug)]
struct Soak {
    opts: Options,
    dir: PathBuf,
    db: PathBuf,
    replica_root: PathBuf,
    journal: PathBuf,
    writer_stats: PathBuf,
    python: String,
    workload: PathBuf,
    writer: Option<Proc>,
    rep: Replicator,
    features: Features,
    checker: Checker,
    /// The kill schedule: its own stream, so that it depends on the seed only, not on
    /// how many restores happened in between.
    kills: Rng,
    /// Point-in-time targets.
    targets: Rng,
    started: Instant,
    t: Tally,
    last_latest_k: u64,
    rounds: u32,
    wal_failed: bool,
    spool_failed: bool,
    /// The store behind the fault proxy, with `--faults`.
    store: Option<FaultyStore>,
}

/// A `--faults` soak's store: a private moto behind the fault-injecting proxy.
#[derive(Debug)]
struct FaultyStore {
    proxy: crate::bench::proxy::Proxy,
    faults: std::sync::Arc<crate::bench::proxy::Faults>,
    _moto: Proc,
    /// Outage schedule: its own stream of the seed.
    rng: Rng,
    next_outage: Instant,
    outage_until: Option<Instant>,
    outages: u64,
    outage_secs: u64,
}

pub fn run(args: &[String]) -> Result<ExitCode> {
    let opts = parse(args)?;
    proc::catch_interrupts()?;

    util::step("building replica (cargo build --release -p replica-cli)");
    let st = util::run_status(util::cargo().args(["build", "--release", "-p", "replica-cli"]))?;
    if !st.success() {
        bail!("cargo build --release -p replica-cli failed ({st})");
    }
    let built = target_dir().join("release").join("replica");
    if !built.is_file() {
        bail!("built replica-cli, but {} does not exist", built.display());
    }
    let python = "python3".to_string();
    let ok = Command::new(&python)
        .args(["-c", "import sqlite3"])
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!("the soak's application needs python3 with the sqlite3 module");
    }

    let dir =
        std::env::temp_dir().join(format!("replica-soak-{}-{}", opts.seed, std::process::id()));
    for sub in ["logs", "bin", "restores"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    let bin = keep_binary(&built, &dir.join("bin"))?;
    let features = replicator::detect(&bin)?;
    let workload = dir.join("workload.py");
    std::fs::write(&workload, WORKLOAD)
        .with_context(|| format!("writing {}", workload.display()))?;
    let db = dir.join("soak.db");
    let replica_root = dir.join("replica");
    let mut url = format!("file://{}", replica_root.display());
    let mut replicate_url = url.clone();
    let mut env = Vec::new();
    let mut litestream_config = None;
    let mut store = None;
    if opts.faults {
        util::step("soak --faults: starting a private S3 emulator (moto) behind the fault proxy");
        let (moto, moto_addr) = crate::bench::start_moto(&dir.join("logs"))?;
        let (st, body) = crate::bench::proxy::simple_request(moto_addr, "PUT", "/soak")?;
        if st != 200 {
            bail!("creating bucket soak on moto failed: {body}");
        }
        let faults = crate::bench::proxy::Faults::new(FAULT_RATE_PPM, opts.seed ^ 0xFA17);
        let proxy = crate::bench::proxy::Proxy::start_faulty(moto_addr, faults.clone())?;
        let s3 = |endpoint: &str| {
            format!("s3://soak/replica?endpoint={endpoint}&region=us-east-1&force_path_style=true")
        };
        url = s3(&format!("http://{moto_addr}"));
        replicate_url = s3(&proxy.endpoint());
        env = vec![
            ("AWS_ACCESS_KEY_ID".to_string(), "soak".to_string()),
            (
                "AWS_SECRET_ACCESS_KEY".to_string(),
                "soak-secret".to_string(),
            ),
            ("AWS_EC2_METADATA_DISABLED".to_string(), "true".to_string()),
        ];
        let config = dir.join("litestream.yml");
        std::fs::write(
            &config,
            format!(
                "dbs:\n  - path: {}\n    replica:\n      type: s3\n      bucket: soak\n      path: replica\n      endpoint: http://{moto_addr}\n      region: us-east-1\n      force-path-style: true\n",
                db.display()
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        litestream_config = Some((config, db.clone()));
        let mut rng = Rng(opts.seed ^ 0x0074_A6E5);
        let next_outage = Instant::now() + Duration::from_secs(rng.range(OUTAGE_EVERY));
        store = Some(FaultyStore {
            proxy,
            faults,
            _moto: moto,
            rng,
            next_outage,
            outage_until: None,
            outages: 0,
            outage_secs: 0,
        });
    }
    let journal = dir.join("journal.bin");
    let writer_stats = dir.join("writer.stats");
    let restores = dir.join("restores");

    util::step(&format!(
        "soak: {} min, seed {} (repeat with --seed {}), {RATE} commits/s",
        opts.minutes, opts.seed, opts.seed
    ));
    eprintln!("xtask: directory: {}", dir.display());
    eprintln!("xtask: replica:   {replicate_url}");
    let retention = replicator::retention_for(Duration::from_secs(opts.minutes * 60));
    eprintln!("xtask: replicate: {}", features.describe(retention));

    let mut rep = Replicator::new(
        &bin,
        &db,
        &replicate_url,
        &dir.join("logs"),
        features,
        retention,
    );
    rep.env = env.clone();
    let mut soak = Soak {
        rep,
        checker: Checker {
            bin,
            url,
            python: python.clone(),
            workload: workload.clone(),
            journal: journal.clone(),
            seed: opts.seed,
            dir: restores,
            env,
            litestream_config,
        },
        kills: Rng(opts.seed ^ 0x50A4_50A4),
        targets: Rng(opts.seed ^ 0x7A26_E75C),
        opts,
        dir,
        db,
        replica_root,
        journal,
        writer_stats,
        python,
        workload,
        writer: None,
        features,
        started: Instant::now(),
        t: Tally::default(),
        last_latest_k: 0,
        rounds: 0,
        wal_failed: false,
        spool_failed: false,
        store,
    };

    let result = soak.run();
    // Whatever happened, no child outlives the soak.
    if let Some(mut w) = soak.writer.take() {
        let _ = w.kill();
    }
    soak.rep.kill();
    if soak.t.final_levels.is_empty() {
        soak.t.final_levels = soak.sample_replica();
    }
    let interrupted = matches!(result, Ok(Outcome::Interrupted));
    if let Err(e) = &result {
        soak.t.failures.push(format!("aborted: {e:#}"));
    }
    print!("{}", soak.summary(interrupted));

    let failed = !soak.t.failures.is_empty();
    if failed || interrupted || soak.opts.keep {
        eprintln!("xtask: kept {}", soak.dir.display());
    } else if let Err(e) = std::fs::remove_dir_all(&soak.dir) {
        eprintln!(
            "xtask: WARNING: could not remove {}: {e}",
            soak.dir.display()
        );
    }
    Ok(if interrupted {
        ExitCode::from(130)
    } else if failed {
        eprintln!("\nxtask: soak FAILED");
        ExitCode::FAILURE
    } else {
        eprintln!("\nxtask: soak passed");
        ExitCode::SUCCESS
    })
}

/// The soak's own reference to the binary just built: a target directory shared with
/// other checkouts may get another `replica` at the same path while the soak runs. A
/// hard link keeps this build's file (cargo replaces, never rewrites, the output);
/// a copy where links are impossible.
fn keep_binary(built: &Path, dir: &Path) -> Result<PathBuf> {
    let bin = dir.join("replica");
    if std::fs::hard_link(built, &bin).is_err() {
        std::fs::copy(built, &bin)
            .with_context(|| format!("copying {} to {}", built.display(), bin.display()))?;
    }
    Ok(bin)
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        // Relative to where cargo builds: `util::cargo()` runs in the workspace root.
        Some(d) => paths::workspace_root().join(d),
        None => paths::workspace_root().join("target"),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Completed,
    Interrupted,
}

impl Soak {
    fn elapsed(&self) -> String {
        let s = self.started.elapsed().as_secs();
        format!("[{:02}:{:02}]", s / 60, s % 60)
    }

    fn fail(&mut self, msg: String) {
        eprintln!("{} FAILURE: {msg}", self.elapsed());
        self.t.failures.push(format!("{} {msg}", self.elapsed()));
    }

    fn commits(&self) -> Result<Commits> {
        Commits::load(&self.journal)
    }

    fn run(&mut self) -> Result<Outcome> {
        self.start_writer()?;
        self.rep.start()?;
        eprintln!("{} replicator run 1 started", self.elapsed());

        let deadline = self.started + Duration::from_secs(self.opts.minutes * 60);
        let mut next_round = self.started + ROUND_EVERY;
        let mut stop_at = Some(Instant::now() + Duration::from_secs(self.kills.range(RUN_SECS)));
        let mut start_at: Option<Instant> = None;
        loop {
            if proc::interrupted() {
                eprintln!("{} interrupted: stopping", self.elapsed());
                self.shutdown();
                return Ok(Outcome::Interrupted);
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            self.check_writer()?;
            if let Some((st, log)) = self.rep.check_exited()? {
                self.fail(format!(
                    "the replicator exited by itself ({}); {log}",
                    proc::describe(st)
                ));
                stop_at = None;
                start_at = Some(now + Duration::from_secs(1));
            }
            self.sample();
            let down = self.outage_tick(now);
            if down {
                // No stop or start while the store is down: a SIGTERM could not flush.
                proc::pause(Duration::from_millis(200));
                continue;
            }
            if stop_at.is_some_and(|t| now >= t) && self.rep.is_running() {
                stop_at = None;
                self.stop_replicator()?;
                let down = if self.kills.range((0, 1)) == 0 {
                    DOWN_MS_SHORT
                } else {
                    DOWN_MS_LONG
                };
                start_at = Some(Instant::now() + Duration::from_millis(self.kills.range(down)));
            }
            if start_at.is_some_and(|t| now >= t) && !self.rep.is_running() {
                start_at = None;
                self.rep.start()?;
                self.t.restarts += 1;
                eprintln!(
                    "{} replicator run {} started",
                    self.elapsed(),
                    self.rep.runs.len()
                );
                stop_at = Some(Instant::now() + Duration::from_secs(self.kills.range(RUN_SECS)));
            }
            if now >= next_round && now + Duration::from_secs(20) < deadline {
                self.round()?;
                next_round += ROUND_EVERY;
            }
            proc::pause(Duration::from_millis(200));
        }
        self.finish()?;
        Ok(Outcome::Completed)
    }

    /// Starts and ends outages on the `--faults` schedule; true while one lasts.
    fn outage_tick(&mut self, now: Instant) -> bool {
        let elapsed = self.elapsed();
        let Some(st) = self.store.as_mut() else {
            return false;
        };
        match st.outage_until {
            Some(until) if now >= until => {
                st.proxy.set_down(false);
                st.outage_until = None;
                st.next_outage = now + Duration::from_secs(st.rng.range(OUTAGE_EVERY));
                if let Some(o) = self.rep.outages.last_mut() {
                    o.1 = Some(now_ns());
                }
                eprintln!("{elapsed} store outage over");
                false
            }
            Some(_) => true,
            None if now >= st.next_outage => {
                let secs = st.rng.range(OUTAGE_SECS);
                st.proxy.set_down(true);
                st.outage_until = Some(now + Duration::from_secs(secs));
                st.outages += 1;
                st.outage_secs += secs;
                self.rep.outages.push((now_ns(), None));
                eprintln!("{elapsed} store outage for {secs}s");
                true
            }
            None => false,
        }
    }

    fn start_writer(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.workload)
            .arg("write")
            .arg("--db")
            .arg(&self.db)
            .arg("--journal")
            .arg(&self.journal)
            .arg("--stats")
            .arg(&self.writer_stats)
            .args(["--seed", &self.opts.seed.to_string()])
            .args(["--rate", &RATE.to_string()]);
        let log = self.dir.join("logs").join("writer.log");
        let mut w = Proc::spawn_own_group("the writer", &mut cmd, &log)?;
        // The journal appears once the schema is committed: only then may the
        // replicator start (it would otherwise create the database itself).
        let end = Instant::now() + Duration::from_secs(30);
        while !self.journal.exists() {
            if let Some(st) = w.try_status()? {
                bail!(
                    "the writer exited at start ({}):\n{}",
                    proc::describe(st),
                    w.log_tail(20)
                );
            }
            if Instant::now() >= end {
                bail!("the writer did not create its journal within 30s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.writer = Some(w);
        Ok(())
    }

    /// The writer must keep running: if it stopped, the soak is over.
    fn check_writer(&mut self) -> Result<()> {
        let Some(w) = self.writer.as_mut() else {
            bail!("the writer is not running");
        };
        let Some(st) = w.try_status()? else {
            return Ok(());
        };
        let msg = format!(
            "the writer exited ({}); {}:\n{}",
            proc::describe(st),
            w.log_path().display(),
            w.log_tail(20)
        );
        bail!(
            "{msg}\nstats: {}",
            self.writer_stat("error").unwrap_or_default()
        )
    }

    fn writer_stat(&self, key: &str) -> Option<String> {
        let text = std::fs::read_to_string(&self.writer_stats).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    }

    /// WAL, spool and database sizes, every tick (200 ms), so the maxima are real.
    fn sample(&mut self) {
        let wal = measure::file_len(&with_suffix(&self.db, "-wal"));
        let parts = measure::Spool::measure(&self.spool_dir());
        let spool = parts.total();
        let db = measure::file_len(&self.db);
        if spool > self.t.max_spool.total() {
            self.t.max_spool = parts;
            self.t.max_spool_db = db;
        }
        self.t.max_wal = self.t.max_wal.max(wal);
        self.t.max_db = self.t.max_db.max(db);
        if wal > MAX_WAL && !self.wal_failed {
            self.wal_failed = true;
            self.fail(format!(
                "the WAL reached {:.1} MiB (bound {} MiB)",
                measure::mib(wal),
                MAX_WAL >> 20
            ));
        }
        let bound = SPOOL_DB_IMAGES * db + parts.shipped + SPOOL_SLACK;
        if spool > bound && !self.spool_failed {
            self.spool_failed = true;
            self.fail(format!(
                "the spool reached {:.1} MiB ({:.1} pending, {:.1} shipped, {:.1} other) with a {:.1} MiB database (bound: {SPOOL_DB_IMAGES} × database + shipped + {} MiB)",
                measure::mib(spool),
                measure::mib(parts.pending),
                measure::mib(parts.shipped),
                measure::mib(parts.other),
                measure::mib(db),
                SPOOL_SLACK >> 20
            ));
        }
    }

    fn sample_replica(&mut self) -> BTreeMap<u8, measure::Level> {
        let levels = measure::levels(&self.replica_root);
        let files = levels.values().map(|l| l.files).sum();
        let bytes = levels.values().map(|l| l.bytes).sum();
        self.t.max_replica_files = self.t.max_replica_files.max(files);
        self.t.max_replica_bytes = self.t.max_replica_bytes.max(bytes);
        levels
    }

    /// Stops the running replicator (SIGKILL 3 times in 4, else SIGTERM). After a
    /// SIGTERM it must have exited 0 with every commit made before the signal uploaded.
    fn stop_replicator(&mut self) -> Result<()> {
        let sig = if self.kills.range((0, 3)) == 0 {
            Signal::Term
        } else {
            Signal::Kill
        };
        let run = self.rep.runs.len();
        let t_sig = now_ns();
        let st = self.rep.stop(sig)?;
        *self.t.kills.entry(sig.name()).or_default() += 1;
        eprintln!(
            "{} replicator run {run} stopped with {}: {}",
            self.elapsed(),
            sig.name(),
            proc::describe(st)
        );
        match sig {
            Signal::Kill if st.code().is_some() => {
                self.fail(format!(
                    "replicator run {run} exited ({}) before SIGKILL reached it",
                    proc::describe(st)
                ));
            }
            Signal::Term if st.code() != Some(0) => {
                self.fail(format!(
                    "replicator run {run} did not exit 0 after SIGTERM ({}); see logs/replicate-{run:03}.log",
                    proc::describe(st)
                ));
            }
            Signal::Term => {
                // A graceful stop flushes: everything committed before the signal must
                // be in the replica now.
                let need = self.commits()?.committed_by(t_sig);
                if let Some(k) = self.restore_and_verify(&format!("flush-{run:03}"), None)? {
                    if k < need {
                        self.fail(format!(
                            "after replicator run {run} exited 0 on SIGTERM, the replica restores commit {k}, but {need} were committed before the signal"
                        ));
                    } else {
                        self.t.flush_ok += 1;
                        self.last_latest_k = self.last_latest_k.max(k);
                    }
                }
            }
            // The soak stops its replicator only with SIGKILL or SIGTERM (above).
            Signal::Kill | Signal::Int => {}
        }
        Ok(())
    }

    /// Restores (latest, or the state at `at_ns`) and verifies: Some(k) if the result
    /// is exactly the state after commit k, else None with a failure recorded (and the
    /// restored file kept).
    fn restore_and_verify(&mut self, name: &str, at_ns: Option<u64>) -> Result<Option<u64>> {
        Ok(self.restore_verified(name, at_ns)?.map(|(db, k)| {
            check::discard(&db);
            k
        }))
    }

    /// [`Self::restore_and_verify`], leaving the restored database in place.
    fn restore_verified(
        &mut self,
        name: &str,
        at_ns: Option<u64>,
    ) -> Result<Option<(PathBuf, u64)>> {
        let db = match self.checker.restore(name, at_ns)? {
            Ok(db) => db,
            Err(e) => {
                self.fail(e);
                return Ok(None);
            }
        };
        match self.checker.verify(&db)? {
            Verdict::Commit { k } => Ok(Some((db, k))),
            Verdict::Mismatch(m) => {
                self.fail(format!(
                    "restore {name} is not the state after any commit: {m} (kept: {})",
                    db.display()
                ));
                Ok(None)
            }
        }
    }

    /// Every minute: the latest state, a point in time, the replica's size.
    fn round(&mut self) -> Result<()> {
        self.rounds += 1;
        let r = self.rounds;
        let mut line = format!("{} round {r}:", self.elapsed());

        let t_r = now_ns();
        if let Some(k) = self.restore_and_verify(&format!("latest-{r:03}"), None)? {
            let commits = self.commits()?;
            let _ = write!(line, " latest k={k}/{}", commits.len());
            if k < self.last_latest_k {
                self.fail(format!(
                    "round {r}: the latest restore went back to commit {k} (an earlier one had {})",
                    self.last_latest_k
                ));
            }
            self.last_latest_k = self.last_latest_k.max(k);
            if let Some(x) = self.rep.caught_up_at(t_r) {
                let need = commits.committed_by(x.saturating_sub(LAG_BOUND.as_nanos() as u64));
                if k < need {
                    self.fail(format!(
                        "round {r}: the latest restore has commit {k}, but {need} were committed {LAG_BOUND:?} before {} (the replicator was up then)",
                        if x == t_r { "the restore" } else { "the replicator's last stop" }
                    ));
                }
                if x == t_r {
                    let lag = commits.end_ns(k + 1).map_or(0, |t| t_r.saturating_sub(t));
                    self.t.max_latest_lag_ns = self.t.max_latest_lag_ns.max(lag);
                    let _ = write!(line, " (lag {:.1}s)", secs(lag));
                }
            } else {
                line.push_str(" (replicator starting: no freshness bound)");
            }
            self.t.latest_ok += 1;
        }

        self.pitr(r, &mut line)?;

        let levels = self.sample_replica();
        let files: u64 = levels.values().map(|l| l.files).sum();
        let replica = if self.store.is_some() {
            "replica on S3".to_string()
        } else {
            format!("replica {files} files")
        };
        let _ = write!(
            line,
            " | wal max {:.1} MiB, spool max {:.1} MiB, {replica}",
            measure::mib(self.t.max_wal),
            measure::mib(self.t.max_spool.total())
        );
        eprintln!("{line}");
        Ok(())
    }

    /// A point-in-time restore to a random moment of the retention window.
    fn pitr(&mut self, r: u32, line: &mut String) -> Result<()> {
        let now = now_ns();
        let Some(first) = self.rep.runs.first().map(|run| run.spawned_ns) else {
            return Ok(());
        };
        // Not before the first replicator could have uploaded anything, nor so close to
        // the window's start that retention may be deleting its base right now.
        let lo = (first + 10_000_000_000)
            .max(now.saturating_sub(self.rep.retention.as_nanos() as u64) + 15_000_000_000);
        let hi = now.saturating_sub(5_000_000_000);
        if lo >= hi {
            return Ok(());
        }
        // A whole millisecond, as LTX timestamps are.
        let at = (lo + self.targets.next() % (hi - lo)) / 1_000_000 * 1_000_000;
        let Some(k) = self.restore_and_verify(&format!("pitr-{r:03}"), Some(at))? else {
            return Ok(());
        };
        let commits = self.commits()?;
        let target = check::rfc3339_ms(at);
        let _ = write!(line, " | pitr -{:.0}s k={k}", secs(now - at));
        // Files are taken only if created strictly before the target, and a file is
        // created after the commits it holds began: no commit may begin after it.
        if let Some(b) = commits.begin_ns(k)
            && b >= at
        {
            self.fail(format!(
                "round {r}: restore to {target} holds commit {k}, which began {:.3}s after that time",
                secs(b - at)
            ));
        }
        let bound = self.features.pitr_bound(Duration::from_nanos(now - at));
        if let Some(x) = self.rep.caught_up_at(at) {
            let need = commits.committed_by(x.saturating_sub(bound.as_nanos() as u64));
            if k < need {
                self.fail(format!(
                    "round {r}: restore to {target} has commit {k}, but {need} were committed {bound:?} before {}",
                    if x == at { "that time (the replicator was up)" } else { "the replicator's stop before it" }
                ));
            }
            if x == at {
                let lag = commits.end_ns(k + 1).map_or(0, |t| at.saturating_sub(t));
                self.t.max_pitr_lag_ns = self.t.max_pitr_lag_ns.max(lag);
                let _ = write!(line, " (lag {:.1}s)", secs(lag));
            }
        }
        self.t.pitr_ok += 1;
        Ok(())
    }

    /// Stops the writer and then the replicator, gracefully (Ctrl-C).
    fn shutdown(&mut self) {
        if let Some(mut w) = self.writer.take() {
            let _ = w.stop(Signal::Term, Duration::from_secs(30));
        }
        if self.rep.is_running() {
            let _ = self.rep.stop(Signal::Term);
        }
    }

    /// The end: the writer stops, a replicator flushes everything, and the restore must
    /// be the database itself, for us and for Litestream.
    fn finish(&mut self) -> Result<()> {
        if let Some(st) = self.store.as_mut()
            && st.outage_until.take().is_some()
        {
            st.proxy.set_down(false);
            if let Some(o) = self.rep.outages.last_mut() {
                o.1 = Some(now_ns());
            }
        }
        util::step("soak: stopping the writer, then the replicator (SIGTERM)");
        let Some(mut w) = self.writer.take() else {
            bail!("the writer is not running");
        };
        let st = w.stop(Signal::Term, Duration::from_secs(30))?;
        if st.code() != Some(0) {
            self.fail(format!(
                "the writer exited with {} at the end: {}",
                proc::describe(st),
                self.writer_stat("error").unwrap_or_else(|| w.log_tail(10))
            ));
        }
        let commits = self.commits()?;
        self.t.commits = commits.len();
        if !self.rep.is_running() {
            self.rep.start()?;
            self.t.restarts += 1;
        }
        let run = self.rep.runs.len();
        let st = self.rep.stop(Signal::Term)?;
        if st.code() != Some(0) {
            self.fail(format!(
                "the final replicator run {run} did not exit 0 after SIGTERM ({})",
                proc::describe(st)
            ));
        }
        let pending = measure::dir_size(&self.spool_dir().join("pending")).0;
        if pending > 0 {
            self.fail(format!(
                "a graceful stop left {pending} files in the spool's pending directory"
            ));
        }

        match self.restore_verified("final", None)? {
            Some((restored, k)) if k == commits.len() => {
                self.t.latest_ok += 1;
                // The model says it is the last commit's state; now compare with the
                // database itself.
                match self.checker.compare(&self.db, &restored)? {
                    Some(d) => self.fail(format!(
                        "the final restore differs from the database: {d} (kept: {})",
                        restored.display()
                    )),
                    None => {
                        self.litestream_check(&restored)?;
                        check::discard(&restored);
                    }
                }
            }
            Some((restored, k)) => self.fail(format!(
                "the final restore has commit {k}, but the writer committed {} (kept: {})",
                commits.len(),
                restored.display()
            )),
            None => {}
        }
        self.t.final_levels = self.sample_replica();
        Ok(())
    }

    fn litestream_check(&mut self, ours: &Path) -> Result<()> {
        let bin = match litestream::ensure() {
            Ok(b) => b,
            Err(e) => {
                self.t.litestream = format!("skipped (Litestream not available: {e:#})");
                return Ok(());
            }
        };
        match self.checker.litestream_restore(&bin, "litestream")? {
            Err(e) => self.fail(e),
            Ok(theirs) => match self.checker.compare(ours, &theirs)? {
                Some(d) => self.fail(format!("Litestream's restore differs from ours: {d}")),
                None => {
                    self.t.litestream = "restores the same database".into();
                    check::discard(&theirs);
                }
            },
        }
        Ok(())
    }

    fn spool_dir(&self) -> PathBuf {
        let name = self
            .db
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.db.with_file_name(format!(".{name}-replica"))
    }

    fn summary(&mut self, interrupted: bool) -> String {
        if self.t.commits == 0 {
            self.t.commits = self.commits().map(|c| c.len()).unwrap_or(0);
        }
        let w = |key: &str| self.writer_stat(key).unwrap_or_else(|| "?".into());
        let t = &self.t;
        let elapsed = self.started.elapsed().as_secs_f64();
        let mut s = format!("\n==> soak summary (seed {})\n", self.opts.seed);
        let mut row = |name: &str, value: String| {
            let _ = writeln!(s, "{name:<20}{value}");
        };

        row(
            "duration",
            format!(
                "{:.1} min{}",
                elapsed / 60.0,
                if interrupted { " (interrupted)" } else { "" }
            ),
        );
        row(
            "commits",
            format!(
                "{} ({:.0}/s), {} rows at the end",
                t.commits,
                t.commits as f64 / elapsed.max(1.0),
                w("rows")
            ),
        );
        let ckpt = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"].map(|m| {
            format!(
                "{m} {} ({} busy, max {} ms)",
                w(&format!("ckpt_{m}")),
                w(&format!("ckpt_{m}_busy")),
                w(&format!("ckpt_{m}_max_ms"))
            )
        });
        row("app checkpoints", ckpt.join(", "));
        let auto_on: f64 = w("autockpt_on_s").parse().unwrap_or(0.0);
        row(
            "app autocheckpoint",
            format!("on {:.0}% of the time", 100.0 * auto_on / elapsed.max(1.0)),
        );
        row(
            "app latency",
            format!(
                "max transaction {} ms; BEGIN IMMEDIATE waited max {} ms, {} times over 50 ms; {} stalls over 1 s",
                w("max_txn_ms"),
                w("max_begin_wait_ms"),
                w("begin_waits_over_50ms"),
                w("late_resets")
            ),
        );
        let unexpected = self
            .rep
            .runs
            .iter()
            .filter(|r| r.ended == Some(Ended::Unexpected))
            .count();
        row(
            "replicator",
            format!(
                "{} runs; kills: {}; {} restarts; {unexpected} unexpected exits",
                self.rep.runs.len(),
                list(t.kills.iter().map(|(k, v)| format!("{v} {k}"))),
                t.restarts
            ),
        );
        row(
            "replicator starts",
            format!(
                "{} resumed from the spool; snapshots: {}",
                self.rep.count_log("resuming replication"),
                list(
                    self.rep
                        .snapshot_reasons()
                        .iter()
                        .map(|(r, n)| format!("{n} {r}"))
                )
            ),
        );
        row(
            "restores verified",
            format!(
                "{} latest (max lag {:.1}s, bound {LAG_BOUND:?}), {} after SIGTERM, {} point-in-time (max lag {:.1}s)",
                t.latest_ok,
                secs(t.max_latest_lag_ns),
                t.flush_ok,
                t.pitr_ok,
                secs(t.max_pitr_lag_ns)
            ),
        );
        let replica_size = if self.store.is_some() {
            String::new()
        } else {
            format!(
                ", replica {} files / {:.1} MiB",
                t.max_replica_files,
                measure::mib(t.max_replica_bytes)
            )
        };
        row(
            "max sizes",
            format!(
                "WAL {:.1} MiB (bound {} MiB), spool {:.1} MiB ({:.1} pending, {:.1} shipped, {:.1} other; bound then {:.1} MiB for a {:.1} MiB database), database {:.1} MiB{replica_size}",
                measure::mib(t.max_wal),
                MAX_WAL >> 20,
                measure::mib(t.max_spool.total()),
                measure::mib(t.max_spool.pending),
                measure::mib(t.max_spool.shipped),
                measure::mib(t.max_spool.other),
                measure::mib(SPOOL_DB_IMAGES * t.max_spool_db + t.max_spool.shipped + SPOOL_SLACK),
                measure::mib(t.max_spool_db),
                measure::mib(t.max_db),
            ),
        );
        let now = std::time::SystemTime::now();
        if self.store.is_some() {
            row(
                "replica at end",
                "on S3 (file counts are measured on file:// only)".into(),
            );
        } else {
            row(
                "replica at end",
                list(t.final_levels.iter().map(|(l, v)| {
                    let age = v
                        .oldest
                        .and_then(|o| now.duration_since(o).ok())
                        .map_or(String::new(), |a| format!(", oldest {}s", a.as_secs()));
                    format!(
                        "L{l} {} files ({:.1} MiB{age})",
                        v.files,
                        measure::mib(v.bytes)
                    )
                })),
            );
        }
        if let Some(st) = &self.store {
            let counts = st.faults.counts();
            let requests = st.proxy.len();
            row(
                "store faults",
                format!(
                    "{} outages ({} s in all); {requests} requests answered; broken: {}",
                    st.outages,
                    st.outage_secs,
                    list(counts.iter().map(|(k, v)| format!("{v} {k}")))
                ),
            );
        }
        if !t.litestream.is_empty() {
            row("Litestream 0.5.17", t.litestream.clone());
        }
        row("failures", t.failures.len().to_string());
        for f in &t.failures {
            let _ = writeln!(s, "  - {f}");
        }
        if !t.failures.is_empty() || interrupted {
            let _ = writeln!(
                s,
                "{:<20}{} (logs/, restores/, journal.bin, soak.db)",
                "kept",
                self.dir.display()
            );
        }
        s
    }
}

/// "a, b, c", or "none".
fn list(items: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = items.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}
