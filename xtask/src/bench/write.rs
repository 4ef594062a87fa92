//! Write overhead (flat out, paced) and replication lag (sparse, steady): one writer on
//! one fresh database per run, with no replicator, with `replica`, or with Litestream.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use super::env::{self, Backend, Ctx, Dest, Tool, ToolOpts};
use super::lag::{self, LagResult, Watcher};
use super::report::{Row, Samples, Unit, percentile};
use crate::proc::{self, Proc};

/// How often the `file://` watcher looks at one database's L0 directory.
const WATCH_PERIOD: Duration = Duration::from_millis(5);
/// Wait after the first upload before the writer starts: more than one sync interval.
const SETTLE: Duration = Duration::from_millis(1500);

/// A fresh database, optionally replicated (and ready) by `tool` to `backend`.
struct Single {
    dir: PathBuf,
    db: PathBuf,
    dest: Option<Dest>,
    proc: Option<Proc>,
    /// Proxy log position when the lag measurement started (S3).
    watch_from: usize,
}

impl Single {
    fn new(ctx: &Ctx, name: &str, tool: Option<Tool>, backend: Backend) -> Result<Single> {
        let label = match tool {
            Some(t) => format!("{name}-{}-{}", t.name(), backend.name()),
            None => format!("{name}-none"),
        };
        let dir = ctx.dir(&label)?;
        let db = dir.join("app.db");
        ctx.writer_run(
            &dir,
            &["create", &db.display().to_string(), "--rows", "100"],
            Duration::from_secs(60),
        )?;
        let (dest, proc) = match tool {
            None => (None, None),
            Some(t) => {
                let dest = Dest::new(ctx, backend, &dir)?;
                let dbs = [db.clone()];
                let mut p = env::start_tool(ctx, t, &dbs, &dest, &dir, &ToolOpts::default())?;
                env::wait_ready(&mut p, &dest, &dbs, Duration::from_secs(60))?;
                // Measure the steady state, not start-up: both tools pace uploads to
                // one per sync interval, counting the initial snapshot's.
                proc::sleep(SETTLE)?;
                (Some(dest), Some(p))
            }
        };
        Ok(Single {
            dir,
            db,
            dest,
            proc,
            watch_from: 0,
        })
    }

    fn db_arg(&self) -> String {
        self.db.display().to_string()
    }

    /// Starts looking for new L0 objects (lag runs).
    fn watch(&mut self) -> Result<Option<Watcher>> {
        let Some(dest) = &self.dest else {
            return Ok(None);
        };
        match (&dest.proxy, dest.backend) {
            (Some(p), Backend::S3) => {
                p.capture_ltx(true);
                self.watch_from = p.len();
                Ok(None)
            }
            _ => Watcher::start(vec![dest.l0_dir("app")], WATCH_PERIOD).map(Some),
        }
    }

    /// Waits `grace`, then matches the writer's commits to the objects seen.
    fn lag(
        &mut self,
        watcher: Option<Watcher>,
        times: &std::path::Path,
        grace: Duration,
    ) -> Result<LagResult> {
        proc::sleep(grace)?;
        if let Some(p) = self.proc.as_mut() {
            p.ensure_running()?;
        }
        let end = lag::now_ns();
        let apps = match (watcher, &self.dest) {
            (Some(w), _) => w.finish(),
            (None, Some(d)) => match &d.proxy {
                Some(p) => lag::s3_appearances(
                    p.requests().get(self.watch_from..).unwrap_or(&[]),
                    &[d.key_prefix("app")],
                ),
                None => Vec::new(),
            },
            (None, None) => Vec::new(),
        };
        lag::write_objects(&self.dir, &apps)?;
        let commits = lag::read_commits(times)?;
        Ok(lag::compute(&commits, &apps, 0, end))
    }

    fn finish(mut self, ctx: &Ctx) -> Result<()> {
        if let Some(p) = self.proc.as_mut() {
            env::stop_tool(p)?;
        }
        drop(self.dest.take());
        ctx.done_with(&self.dir)
    }
}

fn label(tool: Option<Tool>, backend: Backend) -> String {
    match tool {
        Some(t) => format!("{} [{}]", t.name(), backend.name()),
        None => "no replicator".into(),
    }
}

type Key = (Tool, Backend);

fn get(m: &HashMap<Key, Samples>, t: Tool, b: Backend) -> Samples {
    m.get(&(t, b)).cloned().unwrap_or_default()
}

// ---------------------------------------------------------------------------------
// flat out

fn flat_once(ctx: &Ctx, tool: Option<Tool>, backend: Backend) -> Result<f64> {
    let run = Single::new(ctx, "flat", tool, backend)?;
    let out = ctx.writer_run(
        &run.dir,
        &[
            "flat",
            &run.db_arg(),
            "--seconds",
            &ctx.s.flat_secs.to_string(),
        ],
        Duration::from_secs_f64(ctx.s.flat_secs + 120.0),
    )?;
    let per_sec = out["per_second"]
        .as_f64()
        .context("writer: no per_second")?;
    eprintln!(
        "xtask bench: flat out, {}: {per_sec:.0} commits/s",
        label(tool, backend)
    );
    run.finish(ctx)?;
    Ok(per_sec)
}

pub fn flat(ctx: &Ctx) -> Result<Vec<Row>> {
    let s = &ctx.s;
    let mut base = Samples::default();
    let mut tput: HashMap<Key, Samples> = HashMap::new();
    let mut pct: HashMap<Key, Samples> = HashMap::new();
    for rep in 0..s.reps {
        let b = flat_once(ctx, None, Backend::File)?;
        base.push(b);
        for &backend in &s.write_backends {
            for tool in Tool::order(rep) {
                let v = flat_once(ctx, Some(tool), backend)?;
                tput.entry((tool, backend)).or_default().push(v);
                pct.entry((tool, backend)).or_default().push(100.0 * v / b);
            }
        }
    }
    let section = format!(
        "write overhead, flat out ({}s of single-row commits, synchronous=NORMAL)",
        s.flat_secs
    );
    let mut rows = vec![
        Row::info(&section, "commits/s, no replicator", "—", Unit::PerSec)
            .values(base.clone(), base),
    ];
    for &b in &s.write_backends {
        rows.push(
            Row::info(
                &section,
                "commits/s with the replicator",
                b.name(),
                Unit::PerSec,
            )
            .values(
                get(&tput, Tool::Replica, b),
                get(&tput, Tool::Litestream, b),
            ),
        );
        rows.push(
            Row::info(
                &section,
                "throughput, % of no replicator",
                b.name(),
                Unit::Percent,
            )
            .values(get(&pct, Tool::Replica, b), get(&pct, Tool::Litestream, b))
            .target("≥ 90% of no replicator", |v| v >= 90.0),
        );
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------
// paced (commit latency) + steady-load lag

struct Paced {
    p50_us: f64,
    p99_us: f64,
    lag: Option<LagResult>,
}

fn paced_once(ctx: &Ctx, tool: Option<Tool>, backend: Backend) -> Result<Paced> {
    let s = &ctx.s;
    let mut run = Single::new(ctx, "paced", tool, backend)?;
    let times = run.dir.join("times.txt");
    let watcher = run.watch()?;
    ctx.writer_run(
        &run.dir,
        &[
            "paced",
            &run.db_arg(),
            "--rate",
            &s.paced_rate.to_string(),
            "--seconds",
            &s.paced_secs.to_string(),
            "--times",
            &times.display().to_string(),
        ],
        Duration::from_secs_f64(s.paced_secs + 120.0),
    )?;
    let commits = lag::read_commits(&times)?;
    let lat: Vec<f64> = commits.iter().map(|c| c.latency_ns as f64 / 1e3).collect();
    let lag = match tool {
        Some(_) => Some(run.lag(watcher, &times, s.lag_grace)?),
        None => None,
    };
    let r = Paced {
        p50_us: percentile(&lat, 50.0).unwrap_or(0.0),
        p99_us: percentile(&lat, 99.0).unwrap_or(0.0),
        lag,
    };
    eprintln!(
        "xtask bench: paced {}/s, {}: commit p50 {:.0} µs, p99 {:.0} µs{}",
        s.paced_rate,
        label(tool, backend),
        r.p50_us,
        r.p99_us,
        r.lag.as_ref().map_or(String::new(), |l| format!(
            "; lag p50 {:.0} ms, p99 {:.0} ms ({} L0 files, {} commits missing)",
            percentile(&l.lags_ms, 50.0).unwrap_or(0.0),
            percentile(&l.lags_ms, 99.0).unwrap_or(0.0),
            l.l0_files,
            l.missing
        ))
    );
    run.finish(ctx)?;
    Ok(r)
}

pub fn paced(ctx: &Ctx) -> Result<Vec<Row>> {
    let s = &ctx.s;
    let (mut b50, mut b99) = (Samples::default(), Samples::default());
    let mut p50: HashMap<Key, Samples> = HashMap::new();
    let mut p99: HashMap<Key, Samples> = HashMap::new();
    let mut rel99: HashMap<Key, Samples> = HashMap::new();
    let mut lag50: HashMap<Key, Samples> = HashMap::new();
    let mut lag99: HashMap<Key, Samples> = HashMap::new();
    let mut notes = Vec::new();
    for rep in 0..s.reps {
        let base = paced_once(ctx, None, Backend::File)?;
        b50.push(base.p50_us);
        b99.push(base.p99_us);
        for &backend in &s.write_backends {
            for tool in Tool::order(rep) {
                let r = paced_once(ctx, Some(tool), backend)?;
                let k = (tool, backend);
                p50.entry(k).or_default().push(r.p50_us);
                p99.entry(k).or_default().push(r.p99_us);
                rel99.entry(k).or_default().push(r.p99_us / base.p99_us);
                if let Some(l) = r.lag {
                    lag50
                        .entry(k)
                        .or_default()
                        .push(percentile(&l.lags_ms, 50.0).unwrap_or(0.0));
                    lag99
                        .entry(k)
                        .or_default()
                        .push(percentile(&l.lags_ms, 99.0).unwrap_or(0.0));
                    if l.missing > 0 || l.undecodable > 0 {
                        notes.push(format!(
                            "{}: {} commits never appeared within the grace period, {} undecodable files",
                            label(Some(tool), backend),
                            l.missing,
                            l.undecodable
                        ));
                    }
                }
            }
        }
    }
    for n in notes {
        eprintln!("xtask bench: note: steady lag, {n}");
    }
    let section = format!(
        "write overhead, paced ({} commits/s for {}s)",
        s.paced_rate, s.paced_secs
    );
    let mut rows = vec![
        Row::info(
            &section,
            "commit latency p50, no replicator",
            "—",
            Unit::Micros,
        )
        .values(b50.clone(), b50),
        Row::info(
            &section,
            "commit latency p99, no replicator",
            "—",
            Unit::Micros,
        )
        .values(b99.clone(), b99),
    ];
    for &b in &s.write_backends {
        rows.push(
            Row::info(&section, "commit latency p50", b.name(), Unit::Micros)
                .values(get(&p50, Tool::Replica, b), get(&p50, Tool::Litestream, b)),
        );
        rows.push(
            Row::info(&section, "commit latency p99", b.name(), Unit::Micros)
                .values(get(&p99, Tool::Replica, b), get(&p99, Tool::Litestream, b)),
        );
        rows.push(
            Row::info(
                &section,
                "commit latency p99 ÷ no replicator",
                b.name(),
                Unit::Times,
            )
            .values(
                get(&rel99, Tool::Replica, b),
                get(&rel99, Tool::Litestream, b),
            )
            .target("≤ 1.05× no replicator", |v| v <= 1.05),
        );
    }
    let lag_section = format!(
        "replication lag, steady load ({} commits/s, the paced runs)",
        s.paced_rate
    );
    for &b in &s.write_backends {
        rows.push(
            Row::info(&lag_section, "lag p50", b.name(), Unit::Millis).values(
                get(&lag50, Tool::Replica, b),
                get(&lag50, Tool::Litestream, b),
            ),
        );
        rows.push(
            Row::info(&lag_section, "lag p99", b.name(), Unit::Millis)
                .values(
                    get(&lag99, Tool::Replica, b),
                    get(&lag99, Tool::Litestream, b),
                )
                .target("≤ sync interval + 100 ms (1,100 ms)", |v| v <= 1100.0),
        );
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------
// sparse commits

pub fn sparse(ctx: &Ctx) -> Result<Vec<Row>> {
    let s = &ctx.s;
    let mut p50: HashMap<Key, Samples> = HashMap::new();
    let mut p99: HashMap<Key, Samples> = HashMap::new();
    let mut gap: HashMap<Key, Samples> = HashMap::new();
    let mut per_commit: HashMap<Key, Samples> = HashMap::new();
    for rep in 0..s.reps {
        for &backend in &s.write_backends {
            for tool in Tool::order(rep) {
                let mut run = Single::new(ctx, "sparse", Some(tool), backend)?;
                let times = run.dir.join("times.txt");
                let watcher = run.watch()?;
                ctx.writer_run(
                    &run.dir,
                    &[
                        "sparse",
                        &run.db_arg(),
                        "--count",
                        &s.sparse_commits.to_string(),
                        "--gap-min",
                        &s.sparse_gap.0.to_string(),
                        "--gap-max",
                        &s.sparse_gap.1.to_string(),
                        "--seed",
                        &(rep + 1).to_string(),
                        "--times",
                        &times.display().to_string(),
                    ],
                    Duration::from_secs_f64(s.sparse_commits as f64 * s.sparse_gap.1 + 120.0),
                )?;
                let l = run.lag(watcher, &times, s.lag_grace)?;
                let k = (tool, backend);
                let (a, b) = (
                    percentile(&l.lags_ms, 50.0).unwrap_or(0.0),
                    percentile(&l.lags_ms, 99.0).unwrap_or(0.0),
                );
                p50.entry(k).or_default().push(a);
                p99.entry(k).or_default().push(b);
                if let Some(g) = l.min_gap_ms {
                    gap.entry(k).or_default().push(g / 1000.0);
                }
                per_commit
                    .entry(k)
                    .or_default()
                    .push(l.l0_files as f64 / s.sparse_commits as f64);
                eprintln!(
                    "xtask bench: sparse, {}: lag p50 {a:.0} ms, p99 {b:.0} ms; {} L0 files for {} commits, shortest gap {}; {} missing",
                    label(Some(tool), backend),
                    l.l0_files,
                    s.sparse_commits,
                    l.min_gap_ms.map_or("—".into(), |g| format!("{g:.0} ms")),
                    l.missing
                );
                run.finish(ctx)?;
            }
        }
    }
    let section = format!(
        "replication lag, sparse commits ({} per run, {}–{} s apart, 1 s sync interval)",
        s.sparse_commits, s.sparse_gap.0, s.sparse_gap.1
    );
    let mut rows = Vec::new();
    for &b in &s.write_backends {
        rows.push(
            Row::info(&section, "lag p50", b.name(), Unit::Millis)
                .values(get(&p50, Tool::Replica, b), get(&p50, Tool::Litestream, b))
                .target("≤ 100 ms", |v| v <= 100.0),
        );
        rows.push(
            Row::info(&section, "lag p99", b.name(), Unit::Millis)
                .values(get(&p99, Tool::Replica, b), get(&p99, Tool::Litestream, b))
                .target("≤ 200 ms", |v| v <= 200.0),
        );
        // Upload times are observed to within the watcher period: allow that much.
        rows.push(
            Row::info(
                &section,
                "shortest gap between two L0 uploads",
                b.name(),
                Unit::Seconds,
            )
            .values(get(&gap, Tool::Replica, b), get(&gap, Tool::Litestream, b))
            .target("≥ 1 s (at most one upload per interval)", |v| v >= 0.99),
        );
        rows.push(
            Row::info(&section, "L0 uploads per commit", b.name(), Unit::Number).values(
                get(&per_commit, Tool::Replica, b),
                get(&per_commit, Tool::Litestream, b),
            ),
        );
    }
    Ok(rows)
}
