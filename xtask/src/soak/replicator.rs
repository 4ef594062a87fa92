//! `replica replicate` under test: its flags, its runs (each start to each kill), and
//! from them the moments at which the replica can be expected to be caught up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::now_ns;
use crate::proc::{self, Proc, Signal};

/// Intervals scaled down from the defaults (1s, 1h, 72h) so that a soak of minutes goes
/// through many snapshots and retention passes (see [`retention_for`]).
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(60);

/// Retention for a soak of `run`: 5 minutes, but at most a quarter of the run (and at
/// least a minute), so that even a short soak deletes history and restores points
/// near the start of the window.
pub fn retention_for(run: Duration) -> Duration {
    (run / 4).clamp(Duration::from_secs(60), Duration::from_secs(300))
}
/// Compaction levels and how long L0 files stay, passed only to a `replica` whose help
/// lists `--levels` and `--l0-retention`.
const LEVELS: &str = "5s,20s,60s";
const LEVEL_1: Duration = Duration::from_secs(5);
pub const L0_RETENTION: Duration = Duration::from_secs(30);

/// How long a start may take before its first capture: opening, re-walking the WAL up
/// to the spool's position, or a new snapshot of a ~10 MB database.
const STARTUP: Duration = Duration::from_secs(5);
/// How far behind the writer the replica may be while a replicator runs: a commit is
/// cut into an L0 file within one sync interval, and uploaded within one more (uploads
/// are paced to one per interval, a backlog goes as one merged file). The rest is
/// slack for a capture thread busy with a snapshot or checkpoint, and for a 2-core
/// machine shared by the writer, the replicator and restores.
pub const LAG_BOUND: Duration = Duration::from_secs(2 * SYNC_INTERVAL.as_secs() + 3);

/// What this `replica` supports, from `replica replicate --help`.
#[derive(Debug, Clone, Copy)]
pub struct Features {
    pub levels: bool,
}

pub fn detect(bin: &Path) -> Result<Features> {
    let out = Command::new(bin)
        .args(["replicate", "--help"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} replicate --help", bin.display()))?;
    if !out.status.success() {
        bail!(
            "`{} replicate --help` failed ({}): {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let help = String::from_utf8_lossy(&out.stdout);
    Ok(Features {
        levels: help.contains("--levels") && help.contains("--l0-retention"),
    })
}

impl Features {
    /// How far before a point `age` in the past a restore to it may stop: as for the
    /// latest state while L0 files are kept; past L0 retention, L1 files (kept for the
    /// whole window, each stamped with its newest input's time) are the steps, so one
    /// L1 interval more, and one again for a compaction that runs late on a busy
    /// machine.
    pub fn pitr_bound(&self, age: Duration) -> Duration {
        if self.levels && age + Duration::from_secs(5) >= L0_RETENTION {
            LAG_BOUND + 2 * LEVEL_1
        } else {
            LAG_BOUND
        }
    }

    pub fn describe(&self, retention: Duration) -> String {
        let base = format!(
            "--sync-interval {}s --snapshot-interval {}s --retention {}s",
            SYNC_INTERVAL.as_secs(),
            SNAPSHOT_INTERVAL.as_secs(),
            retention.as_secs()
        );
        if self.levels {
            format!(
                "{base} --levels {LEVELS} --l0-retention {}s",
                L0_RETENTION.as_secs()
            )
        } else {
            format!("{base} (this replica has no --levels/--l0-retention)")
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Killed(Signal),
    /// It exited without being told to: always a failure.
    Unexpected,
}

#[derive(Debug, Clone)]
pub struct Run {
    pub spawned_ns: u64,
    pub stopped_ns: Option<u64>,
    pub ended: Option<Ended>,
}

#[derive(Debug)]
pub struct Replicator {
    bin: PathBuf,
    db: PathBuf,
    url: String,
    logs: PathBuf,
    features: Features,
    pub retention: Duration,
    current: Option<Proc>,
    pub runs: Vec<Run>,
    /// Set for each run's process (the S3 credentials of a `--faults` soak).
    pub env: Vec<(String, String)>,
    /// Store outages (start, end) in ns: the replica cannot be fresh during one, nor
    /// until [`RECOVERY`] after it.
    pub outages: Vec<(u64, Option<u64>)>,
}

/// After an outage, how long until the replica is caught up again: the shipper's
/// longest backoff (30 s) plus the catch-up upload.
pub const RECOVERY: Duration = Duration::from_secs(40);

impl Replicator {
    pub fn new(
        bin: &Path,
        db: &Path,
        url: &str,
        logs: &Path,
        features: Features,
        retention: Duration,
    ) -> Self {
        Replicator {
            bin: bin.to_path_buf(),
            db: db.to_path_buf(),
            url: url.to_string(),
            logs: logs.to_path_buf(),
            features,
            retention,
            current: None,
            runs: Vec::new(),
            env: Vec::new(),
            outages: Vec::new(),
        }
    }

    pub fn is_running(&self) -> bool {
        self.current.is_some()
    }

    /// Starts a run and waits for its "replicating" log line, so that later signals
    /// reach its handlers.
    pub fn start(&mut self) -> Result<()> {
        if self.current.is_some() {
            bail!("replicator already running");
        }
        let n = self.runs.len() + 1;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("replicate")
            .arg(&self.db)
            .arg(&self.url)
            .args(["--sync-interval", &format!("{}s", SYNC_INTERVAL.as_secs())])
            .args([
                "--snapshot-interval",
                &format!("{}s", SNAPSHOT_INTERVAL.as_secs()),
            ])
            .args(["--retention", &format!("{}s", self.retention.as_secs())])
            .env("REPLICA_LOG", "info")
            // Plain text in the log files (tracing colours stderr even when it is a file).
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if self.features.levels {
            cmd.args(["--levels", LEVELS])
                .args(["--l0-retention", &format!("{}s", L0_RETENTION.as_secs())]);
        }
        let log = self.logs.join(format!("replicate-{n:03}.log"));
        let spawned_ns = now_ns();
        let mut p = Proc::spawn_own_group(&format!("replicator run {n}"), &mut cmd, &log)?;
        self.runs.push(Run {
            spawned_ns,
            stopped_ns: None,
            ended: None,
        });
        // A start during (or just after) an outage waits for the store.
        let deadline = std::time::Instant::now() + Duration::from_secs(150);
        loop {
            if p.log_text().contains("replicating") {
                break;
            }
            if let Some(st) = p.try_status()? {
                self.ended(Ended::Unexpected);
                bail!(
                    "{} exited at start ({}):\n{}",
                    p.name(),
                    proc::describe(st),
                    p.log_tail(30)
                );
            }
            if std::time::Instant::now() >= deadline {
                self.ended(Ended::Unexpected);
                bail!(
                    "{} did not log \"replicating\" within 150s:\n{}",
                    p.name(),
                    p.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.current = Some(p);
        Ok(())
    }

    fn ended(&mut self, how: Ended) {
        if let Some(r) = self.runs.last_mut()
            && r.stopped_ns.is_none()
        {
            r.stopped_ns = Some(now_ns());
            r.ended = Some(how);
        }
    }

    /// Stops the current run with `sig` and returns its exit status (waiting up to a
    /// minute: SIGTERM flushes, with a 30 s upload timeout).
    pub fn stop(&mut self, sig: Signal) -> Result<ExitStatus> {
        let Some(mut p) = self.current.take() else {
            bail!("no replicator running");
        };
        // The run counts as up until the signal: the moment it stops serving.
        self.ended(Ended::Killed(sig));
        p.stop(sig, Duration::from_secs(60))
    }

    /// SIGKILLs the current run, if any (on the way out after an error).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.current.take() {
            let _ = p.kill();
        }
    }

    /// If the current run exited by itself: its status and log tail.
    pub fn check_exited(&mut self) -> Result<Option<(ExitStatus, String)>> {
        let Some(p) = self.current.as_mut() else {
            return Ok(None);
        };
        match p.try_status()? {
            None => Ok(None),
            Some(st) => {
                let tail = format!("{}:\n{}", p.log_path().display(), p.log_tail(30));
                self.current = None;
                self.ended(Ended::Unexpected);
                Ok(Some((st, tail)))
            }
        }
    }

    /// The latest moment `x <= t_ns` at which a run had been up, with the store
    /// answering, for at least `STARTUP + LAG_BOUND` (and [`RECOVERY`] after an
    /// outage): by then everything committed up to `x - LAG_BOUND` was in the replica
    /// (and stays there). `None` if no run qualifies.
    pub fn caught_up_at(&self, t_ns: u64) -> Option<u64> {
        let settle = (STARTUP + LAG_BOUND).as_nanos() as u64;
        let recovery = RECOVERY.as_nanos() as u64;
        self.runs.iter().rev().find_map(|r| {
            // The stretches of this run during which the replica was kept fresh:
            // (from when it is caught up, until when).
            let mut stretches = vec![(r.spawned_ns + settle, r.stopped_ns.unwrap_or(u64::MAX))];
            for &(down, up) in &self.outages {
                let up = up.map_or(u64::MAX, |u| u.saturating_add(recovery));
                stretches = stretches
                    .into_iter()
                    .flat_map(|(from, to)| {
                        if up <= from || down >= to {
                            vec![(from, to)]
                        } else {
                            vec![(from, down), (up, to)]
                        }
                    })
                    .collect();
            }
            stretches.into_iter().rev().find_map(|(from, to)| {
                let end = to.min(t_ns);
                (from <= end).then_some(end)
            })
        })
    }

    fn log_lines(&self) -> impl Iterator<Item = String> + '_ {
        (1..=self.runs.len()).flat_map(|n| {
            std::fs::read_to_string(self.logs.join(format!("replicate-{n:03}.log")))
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
    }

    /// Log lines containing `needle`, over all runs.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log_lines().filter(|l| l.contains(needle)).count()
    }

    /// Snapshots taken, by the `reason=` of their log line (interval, no_continuity, ...).
    pub fn snapshot_reasons(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for l in self.log_lines().filter(|l| l.contains("snapshot spooled")) {
            let reason = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("reason="))
                .unwrap_or("?");
            *out.entry(reason.to_string()).or_default() += 1;
        }
        out
    }
}
