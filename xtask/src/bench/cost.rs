//! Running cost with many databases in one process: idle and busy sets on the S3
//! emulator (requests counted by the proxies, CPU and memory from /proc), and the
//! 1,000-database scale run on `file://` (lag and memory).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::env::{self, Backend, Ctx, Dest, Tool, ToolOpts};
use super::lag::{self, Watcher};
use super::proxy::{Counts, Kind};
use super::report::{Row, Samples, Unit, percentile};
use crate::proc::{self, Proc};

/// How often `replica` renews an idle database's lease (its default TTL / 3).
const LEASE_RENEWAL_SECS: f64 = 10.0;

struct Set {
    tool: Tool,
    busy: bool,
    dir: PathBuf,
    dbs: Vec<PathBuf>,
    dest: Dest,
    proc: Proc,
    start_idx: usize,
    cpu0: f64,
}

#[derive(Debug, Default, Clone)]
struct Measured {
    counts: Counts,
    cpu: f64,
    rss: u64,
}

/// Idle and busy sets, both tools, all four at once: each has its own bucket and
/// proxy, so the counts are separate, and CPU and memory are per process. Running
/// them together halves the wall time; an idle replicator's CPU time barely depends
/// on what else runs.
pub fn idle_busy(ctx: &Ctx) -> Result<(Vec<Row>, Vec<String>)> {
    let s = &ctx.s;
    ctx.reset_s3()?;
    // The idle processes of both tools serve their metrics and are scraped once a
    // second, as an operator would: the replica's request count then shows that
    // scrapes cost no object-store request, and both CPU figures include serving them.
    let mut endpoints = Vec::new();
    let mut sets = Vec::new();
    for busy in [false, true] {
        for tool in [Tool::Replica, Tool::Litestream] {
            let dir = ctx.dir(&format!(
                "{}-{}",
                if busy { "busy" } else { "idle" },
                tool.name()
            ))?;
            let dbs = env::create_dbs(ctx, &dir, s.cost_dbs, 1000)?;
            let dest = Dest::new(ctx, Backend::S3, &dir)?;
            let mut opts = ToolOpts::default();
            if !busy {
                let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
                opts.metrics_addr = Some(addr);
                endpoints.push((tool, addr, 0u64));
            }
            let proc = env::start_tool(ctx, tool, &dbs, &dest, &dir, &opts)?;
            sets.push(Set {
                tool,
                busy,
                dir,
                dbs,
                dest,
                proc,
                start_idx: 0,
                cpu0: 0.0,
            });
        }
    }
    for set in sets.iter_mut() {
        env::wait_ready(&mut set.proc, &set.dest, &set.dbs, Duration::from_secs(300))?;
    }
    // Let the initial uploads finish before the window opens.
    proc::sleep(Duration::from_secs(5))?;
    let mut writers = Vec::new();
    for set in sets.iter_mut() {
        set.start_idx = set.dest.proxy.as_ref().map_or(0, |p| p.len());
        set.cpu0 = set.proc.cpu_seconds()?;
    }
    let t0 = Instant::now();
    for set in sets.iter().filter(|s| s.busy) {
        let list = set.dir.join("dbs.txt");
        let log = set.dir.join("writer.log");
        writers.push(ctx.writer_spawn(
            "writer.py multi",
            &[
                "multi",
                &list.display().to_string(),
                "--rate",
                &s.busy_rate.to_string(),
                "--seconds",
                &s.cost_secs.to_string(),
                "--times",
                &set.dir.join("times.txt").display().to_string(),
            ],
            &log,
        )?);
    }
    eprintln!(
        "xtask bench: idle and busy sets running for {:.0}s ({} databases each)",
        s.cost_secs, s.cost_dbs
    );
    while t0.elapsed().as_secs_f64() < s.cost_secs {
        proc::sleep(Duration::from_secs(1))?;
        for set in sets.iter_mut() {
            set.proc.ensure_running()?;
        }
        for (tool, addr, n) in endpoints.iter_mut() {
            *n += u64::from(scrape(*tool, *addr));
        }
    }
    let window = t0.elapsed().as_secs_f64();
    let mut results = Vec::new();
    for set in sets.iter() {
        let reqs = set
            .dest
            .proxy
            .as_ref()
            .map(|p| p.requests())
            .unwrap_or_default();
        let counts = Counts::of(reqs.get(set.start_idx..).unwrap_or(&[]));
        let m = Measured {
            counts,
            cpu: set.proc.cpu_seconds()? - set.cpu0,
            rss: set.proc.peak_rss()?,
        };
        eprintln!(
            "xtask bench: {} {}: {} requests (PUT {}, LIST {}, GET {}), {:.2} CPU s, peak RSS {} MiB",
            if set.busy { "busy" } else { "idle" },
            set.tool.name(),
            m.counts.total,
            m.counts.get(Kind::Put),
            m.counts.get(Kind::List),
            m.counts.get(Kind::Get),
            m.cpu,
            m.rss >> 20
        );
        results.push((set.tool, set.busy, m));
    }
    for w in writers.iter_mut() {
        let st = w.wait(Duration::from_secs(120))?;
        if !st.success() {
            anyhow::bail!("the busy writer failed ({st}):\n{}", w.log_tail(25));
        }
    }
    for set in sets.iter_mut() {
        env::stop_tool(&mut set.proc)?;
    }
    for set in sets {
        drop(set.dest);
        ctx.done_with(&set.dir)?;
    }

    let pick = |tool: Tool, busy: bool| -> Measured {
        results
            .iter()
            .find(|(t, b, _)| *t == tool && *b == busy)
            .map(|(_, _, m)| m.clone())
            .unwrap_or_default()
    };
    let per_db_hour = |n: u64| n as f64 / s.cost_dbs as f64 / (window / 3600.0);
    let mins = window / 60.0;
    let mut rows = Vec::new();
    for busy in [false, true] {
        let (r, l) = (pick(Tool::Replica, busy), pick(Tool::Litestream, busy));
        let section = if busy {
            format!(
                "busy cost ({} databases × {} commits/s, {mins:.1} min, one process per tool)",
                s.cost_dbs, s.busy_rate
            )
        } else {
            format!(
                "idle cost ({} idle databases, {mins:.1} min, one process per tool)",
                s.cost_dbs
            )
        };
        let v = |f: &dyn Fn(&Measured) -> f64| (Samples::one(f(&r)), Samples::one(f(&l)));
        let row = |metric: &str, unit: Unit, f: &dyn Fn(&Measured) -> f64| {
            let (a, b) = v(f);
            Row::info(&section, metric, "s3", unit).values(a, b)
        };
        if busy {
            for k in [Kind::Put, Kind::List, Kind::Get] {
                rows.push(row(&format!("{} requests", k.name()), Unit::Count, &|m| {
                    m.counts.get(k) as f64
                }));
            }
            rows.push(row(
                "other requests (HEAD, DELETE, POST)",
                Unit::Count,
                &|m| {
                    (m.counts.total
                        - m.counts.get(Kind::Put)
                        - m.counts.get(Kind::List)
                        - m.counts.get(Kind::Get)) as f64
                },
            ));
            rows.push(
                row("all requests", Unit::Count, &|m| m.counts.total as f64)
                    .target_below_litestream("fewer requests than Litestream"),
            );
            rows.push(row("requests per database per hour", Unit::Number, &|m| {
                per_db_hour(m.counts.total)
            }));
            rows.push(row("bytes uploaded (request bodies)", Unit::Bytes, &|m| {
                m.counts.bytes_up as f64
            }));
        } else {
            // Nothing but the lease: one conditional PUT per database every 10 s
            // (a 30 s lease renewed at a third of its life), plus one each for the
            // renewals already due when the window opens.
            let renewals = s.cost_dbs as f64 * ((window / LEASE_RENEWAL_SECS).ceil() + 1.0);
            rows.push(
                row("object-store requests", Unit::Count, &|m| {
                    m.counts.total as f64
                })
                .target(
                    &format!("lease renewals only (≤ {renewals:.0})"),
                    move |v| v <= renewals,
                ),
            );
            rows.push(row("PUT requests (lease renewals)", Unit::Count, &|m| {
                m.counts.get(Kind::Put) as f64
            }));
            rows.push(row("requests per database per hour", Unit::Number, &|m| {
                per_db_hour(m.counts.total)
            }));
        }
        rows.push(
            row("CPU seconds", Unit::Seconds, &|m| m.cpu)
                .target_below_litestream("less CPU than Litestream"),
        );
        rows.push(
            row("peak RSS", Unit::Bytes, &|m| m.rss as f64)
                .target_below_litestream("less memory than Litestream"),
        );
    }
    let note = format!(
        "Idle and busy cost: the four replicator processes (idle and busy × replica and Litestream) run \
         at the same time, each with its own bucket on one moto server and its own counting proxy. The \
         window opens 5 s after every database's first upload and lasts {window:.0} s; requests are \
         those the proxy answered in the window; CPU is utime+stime from /proc/<pid>/stat over the \
         window; peak RSS is VmHWM (whole process lifetime, including the initial snapshots). \
         The idle process of each tool served Prometheus metrics (`--metrics-addr`; Litestream's \
         `addr:`) and was scraped once a second, as an operator would, so both CPU figures include \
         serving them: {} successful scrapes of /metrics within the window, counted among the \
         requests above if they caused any.",
        endpoints
            .iter()
            .map(|(tool, _, n)| format!("{n} of {}", tool.name()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some((tool, addr, _)) = endpoints.iter().find(|(_, _, n)| *n == 0) {
        anyhow::bail!(
            "the idle {}'s /metrics never answered at {addr}",
            tool.name()
        );
    }
    Ok((rows, vec![note]))
}

/// One GET of `/metrics`; true if it answered 200 with the tool's own metrics.
fn scrape(tool: Tool, addr: std::net::SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    let mut body = String::new();
    c.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_ok()
        && c.read_to_string(&mut body).is_ok()
        && body.starts_with("HTTP/1.")
        && body.contains(" 200 ")
        && body.contains(match tool {
            Tool::Replica => "replica_lag_seconds",
            Tool::Litestream => "litestream_",
        })
}

/// `scale_dbs` databases in one process at one commit per second each (file://).
pub fn scale(ctx: &Ctx) -> Result<(Vec<Row>, Vec<String>)> {
    let s = &ctx.s;
    let (mut p50, mut p99, mut rss, mut cpu) = (
        [Samples::default(), Samples::default()],
        [Samples::default(), Samples::default()],
        [Samples::default(), Samples::default()],
        [Samples::default(), Samples::default()],
    );
    let mut notes = Vec::new();
    for tool in Tool::order(0) {
        let i = usize::from(tool == Tool::Litestream);
        let dir = ctx.dir(&format!("scale-{}", tool.name()))?;
        let t0 = Instant::now();
        let dbs = env::create_dbs(ctx, &dir, s.scale_dbs, 10)?;
        let dest = Dest::new(ctx, Backend::File, &dir)?;
        let mut p = env::start_tool(ctx, tool, &dbs, &dest, &dir, &ToolOpts::default())?;
        env::wait_ready(
            &mut p,
            &dest,
            &dbs,
            Duration::from_secs(120 + s.scale_dbs as u64 / 2),
        )?;
        eprintln!(
            "xtask bench: scale, {}: {} databases replicating after {:.1}s",
            tool.name(),
            s.scale_dbs,
            t0.elapsed().as_secs_f64()
        );
        let dirs = dbs.iter().map(|d| dest.l0_dir(&env::stem(d))).collect();
        let watcher = Watcher::start(dirs, Duration::from_millis(25))?;
        let list = dir.join("dbs.txt");
        let times = dir.join("times.txt");
        let from = lag::now_ns() + (s.scale_warmup_secs * 1e9) as i64;
        let cpu0 = p.cpu_seconds()?;
        let total = s.scale_warmup_secs + s.scale_secs;
        let out = ctx.writer_run(
            &dir,
            &[
                "multi",
                &list.display().to_string(),
                "--rate",
                "1",
                "--seconds",
                &total.to_string(),
                "--times",
                &times.display().to_string(),
            ],
            Duration::from_secs_f64(total + 300.0),
        )?;
        proc::sleep(s.lag_grace)?;
        p.ensure_running()?;
        let end = lag::now_ns();
        let cpu_used = p.cpu_seconds()? - cpu0;
        let apps = watcher.finish();
        lag::write_objects(&dir, &apps)?;
        let commits = lag::read_commits(&times)?;
        let l = lag::compute(&commits, &apps, from, end);
        let (a, b) = (
            percentile(&l.lags_ms, 50.0).unwrap_or(0.0),
            percentile(&l.lags_ms, 99.0).unwrap_or(0.0),
        );
        let peak = p.peak_rss()?;
        let late = out["late"].as_u64().unwrap_or(0);
        eprintln!(
            "xtask bench: scale, {}: lag p50 {a:.0} ms, p99 {b:.0} ms over {} commits ({} missing), peak RSS {} MiB, {:.0}% CPU; writer late {late} times",
            tool.name(),
            l.lags_ms.len(),
            l.missing,
            peak >> 20,
            100.0 * cpu_used / total
        );
        if l.missing > 0 || late > 0 {
            notes.push(format!(
                "Scale, {}: {} commits never appeared within {}s of the last commit (counted with their lag up to then); the writer fell >50 ms behind its schedule {late} times.",
                tool.name(),
                l.missing,
                s.lag_grace.as_secs()
            ));
        }
        p50[i].push(a);
        p99[i].push(b);
        rss[i].push(peak as f64);
        cpu[i].push(100.0 * cpu_used / total);
        env::stop_tool(&mut p)?;
        drop(dest);
        ctx.done_with(&dir)?;
    }
    let section = format!(
        "scale ({} databases in one process, 1 commit/s each, file://, lag over {:.0} s after {:.0} s warm-up)",
        s.scale_dbs, s.scale_secs, s.scale_warmup_secs
    );
    let [r50, l50] = p50;
    let [r99, l99] = p99;
    let [rr, lr] = rss;
    let [rc, lc] = cpu;
    let rows = vec![
        Row::info(&section, "lag p50", "file", Unit::Millis).values(r50, l50),
        Row::info(&section, "lag p99", "file", Unit::Millis)
            .values(r99, l99)
            .target("≤ 2 s", |v| v <= 2000.0),
        Row::info(&section, "peak RSS", "file", Unit::Bytes)
            .values(rr, lr)
            .target("≤ 200 MiB", |v| v <= 200.0 * 1024.0 * 1024.0),
        Row::info(&section, "CPU, % of one core", "file", Unit::Percent).values(rc, lc),
    ];
    Ok((rows, notes))
}
