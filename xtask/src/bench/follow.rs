//! Read replicas: `replica restore --follow` against `litestream restore -f`, each
//! following the replica its own tool writes, on `file://` and on S3 (moto, with a
//! counting proxy in front of the follower alone). Measured: how long after a commit
//! returned on the source a reader of the follower sees it (a sampler reads the
//! follower every 5 ms, each read on a new connection), how many commits a
//! connection kept open never sees, and the follower's requests per hour while the
//! source is idle and while it commits 10 times a second. Both poll every second.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use super::env::{
    Backend, Ctx, Dest, Tool, ToolOpts, litestream_config, start_tool, stem, stop_tool, wait_ready,
};
use super::lag::read_commits;
use super::proxy::Proxy;
use super::report::{Row, Samples, Unit, percentile};
use crate::proc::{self, Proc, Signal};

/// (idle seconds, busy seconds) per run. One run per tool and backend even in the
/// full bench: the busy phase alone gives 1,200 lag samples, and eight runs of five
/// minutes would double the bench's wall time.
fn durations(quick: bool) -> (f64, f64) {
    if quick { (20.0, 30.0) } else { (60.0, 120.0) }
}

pub fn follow(ctx: &Ctx) -> Result<Vec<Row>> {
    let (idle_secs, busy_secs) = durations(ctx.s.quick);
    let mut rows_of: HashMap<(Tool, Backend, &'static str), Samples> = HashMap::new();
    let mut push = |t: Tool, b: Backend, m: &'static str, v: f64| {
        rows_of.entry((t, b, m)).or_default().0.push(v)
    };
    for (backend, tool) in [Backend::File, Backend::S3]
        .into_iter()
        .flat_map(|b| Tool::order(0).map(|t| (b, t)))
    {
        let dir = ctx.dir(&format!("follow-{}-{}", backend.name(), tool.name()))?;
        let db = dir.join("src.db");
        ctx.writer_run(
            &dir,
            &["create", &db.display().to_string(), "--rows", "1000"],
            Duration::from_secs(120),
        )?;
        let dest = Dest::new(ctx, backend, &dir)?;
        let mut primary = start_tool(
            ctx,
            tool,
            std::slice::from_ref(&db),
            &dest,
            &dir,
            &ToolOpts::default(),
        )?;
        wait_ready(
            &mut primary,
            &dest,
            std::slice::from_ref(&db),
            Duration::from_secs(120),
        )?;

        // On S3 the follower reads through its own counting proxy.
        let proxy = match backend {
            Backend::S3 => Some(Proxy::start(ctx.moto_addr)?),
            Backend::File => None,
        };
        let through_proxy = |text: String| match (&dest.proxy, &proxy) {
            (Some(primary), Some(own)) => text.replace(&primary.endpoint(), &own.endpoint()),
            _ => text,
        };
        let url = through_proxy(dest.url(&stem(&db)));
        let count = || proxy.as_ref().map_or(0, Proxy::len);
        let out = dir.join("follower.db");
        let log = dir.join("follower.log");
        let mut follower = match tool {
            Tool::Replica => Proc::spawn(
                "replica restore --follow",
                ctx.replica_cmd()
                    .args(["restore", "--follow", "-o"])
                    .arg(&out)
                    .arg(&url),
                &log,
            )?,
            // Through a config, as Litestream is usually run: given the URL with
            // the endpoint in its query, its follower did not follow on moto.
            Tool::Litestream => {
                let cfg = dir.join("follower.yml");
                let text = through_proxy(litestream_config(&dest, std::slice::from_ref(&db)));
                fs::write(&cfg, text)?;
                Proc::spawn(
                    "litestream restore -f",
                    ctx.litestream_cmd()
                        .args(["restore", "-f", "-config"])
                        .arg(&cfg)
                        .arg("-o")
                        .arg(&out)
                        .arg(&db),
                    &log,
                )?
            }
        };
        let started = std::time::Instant::now();
        while !out.exists() {
            follower.ensure_running()?;
            if started.elapsed() > Duration::from_secs(120) {
                anyhow::bail!(
                    "{}: no follower database after 120 s\n{}",
                    follower.name,
                    follower.log_tail(20)
                );
            }
            proc::sleep(Duration::from_millis(50))?;
        }
        proc::sleep(Duration::from_secs(3))?;

        // Idle: only the follower's polling.
        let before = count();
        proc::sleep(Duration::from_secs_f64(idle_secs))?;
        let idle = (count() - before) as f64 * 3600.0 / idle_secs;

        // Busy: 10 commits a second, sampled on the follower.
        let samples = dir.join("samples.txt");
        let sampler_log = dir.join("sampler.log");
        let sampler_script = ctx.writer.with_file_name("follow_sampler.py");
        let mut sampler = Proc::spawn_with_stdout(
            "follow sampler",
            Command::new("python3")
                .arg(&sampler_script)
                .arg(&out)
                .arg(&samples)
                .arg((busy_secs + 8.0).to_string())
                .stdout(fs::File::create(dir.join("sampler.out"))?),
            &sampler_log,
        )?;
        let times = dir.join("times.txt");
        let before = count();
        ctx.writer_run(
            &dir,
            &[
                "paced",
                &db.display().to_string(),
                "--rate",
                "10",
                "--seconds",
                &busy_secs.to_string(),
                "--times",
                &times.display().to_string(),
            ],
            Duration::from_secs_f64(busy_secs + 120.0),
        )?;
        let busy = (count() - before) as f64 * 3600.0 / busy_secs;
        // The last commits reach the follower a poll or two later.
        proc::sleep(Duration::from_secs(5))?;
        let _ = sampler.stop_or_kill(Signal::Int, Duration::from_secs(20));
        proc::sleep(Duration::from_secs(1))?;
        let errors: u64 = fs::read_to_string(dir.join("sampler.out"))
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0);

        let commits = read_commits(&times)?;
        let seen = read_samples(&samples)?;
        // What an application that keeps its connection open sees.
        let kept = read_samples(&dir.join("samples-long.txt"))?;
        let kept_missing = commits
            .iter()
            .filter(|c| !kept.iter().any(|&(_, k)| k >= c.k))
            .count();
        let lags: Vec<f64> = commits
            .iter()
            .filter_map(|c| {
                seen.iter()
                    .find(|&&(_, k)| k >= c.k)
                    .map(|&(t, _)| (t - c.end_ns).max(0) as f64 / 1e6)
            })
            .collect();
        let missing = commits.len() - lags.len();
        let (p50, p99) = (percentile(&lags, 50.0), percentile(&lags, 99.0));
        eprintln!(
            "xtask bench: follow, {} on {}: lag p50 {p50:?} ms, p99 {p99:?} ms ({} commits, {missing} never seen); requests/h idle {idle:.0}, busy {busy:.0}; reader errors {errors}",
            tool.name(),
            backend.name(),
            commits.len()
        );
        // A follower that showed none of the commits has no lag to report.
        if missing == 0 {
            push(tool, backend, "lag p50", p50.unwrap_or(0.0));
            push(tool, backend, "lag p99", p99.unwrap_or(0.0));
        }
        push(
            tool,
            backend,
            "commits never seen by the reader",
            missing as f64,
        );
        push(
            tool,
            backend,
            "commits never seen by a connection kept open",
            kept_missing as f64,
        );
        if backend == Backend::S3 {
            push(tool, backend, "requests per hour, idle source", idle);
            push(tool, backend, "requests per hour, busy source", busy);
        }
        push(tool, backend, "reader errors", errors as f64);
        let _ = follower.stop_or_kill(Signal::Int, Duration::from_secs(30));
        stop_tool(&mut primary)?;
        drop(proxy);
        ctx.done_with(&dir)?;
    }
    ctx.reset_s3()?;
    let section = "read replica: a follower (1 s poll), source committing 10/s";
    let get = |t: Tool, b: Backend, m: &str| {
        rows_of
            .iter()
            .find(|((tt, bb, mm), _)| *tt == t && *bb == b && *mm == m)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut rows = Vec::new();
    for b in [Backend::File, Backend::S3] {
        for (m, unit) in [
            ("lag p50", Unit::Millis),
            ("lag p99", Unit::Millis),
            ("commits never seen by the reader", Unit::Count),
            ("commits never seen by a connection kept open", Unit::Count),
            ("requests per hour, idle source", Unit::Count),
            ("requests per hour, busy source", Unit::Count),
            ("reader errors", Unit::Count),
        ] {
            if b == Backend::File && m.starts_with("requests") {
                continue;
            }
            rows.push(
                Row::info(section, m, b.name(), unit)
                    .values(get(Tool::Replica, b, m), get(Tool::Litestream, b, m)),
            );
        }
    }
    Ok(rows)
}

/// The sampler's `ns k` lines, in order.
fn read_samples(path: &Path) -> Result<Vec<(i64, u64)>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (t, k) = l.split_once(' ')?;
            Some((t.parse().ok()?, k.parse().ok()?))
        })
        .collect())
}
