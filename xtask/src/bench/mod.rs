//! `cargo xtask bench [--quick]`: `replica` and Litestream 0.5.17 on identical
//! workloads in the same run (issue 9), written to `bench/results.md` and
//! `bench/results.json`.
//!
//! | module     | what                                                              |
//! |------------|-------------------------------------------------------------------|
//! | `env`      | settings, binaries, the S3 emulator, starting either tool          |
//! | `write`    | write overhead (flat out, paced) and lag (sparse, steady)          |
//! | `restore`  | restore time and boot restore of shards                            |
//! | `cost`     | idle/busy request counts, CPU and memory; the 1,000-database run   |
//! | `follow`   | read replicas: follower lag and requests (`restore --follow`/`-f`) |
//! | `lag`      | commit → restorable matching; the `file://` watcher                |
//! | `proxy`    | the counting HTTP proxy in front of moto                           |
//! | `ltxscan`  | the commit counters inside an LTX file                             |
//! | `proc`     | child processes, /proc accounting, interrupts                      |
//! | `report`   | the table, markdown and JSON                                       |
//!
//! The writer is `bench/writer.py` (Python's sqlite3), the same for every run.

mod cost;
mod env;
mod follow;
mod lag;
mod ltxscan;
pub(crate) mod proxy;
mod report;
mod restore;
mod write;

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::proc::{self, Proc};
use crate::{emulators, litestream, paths, util};
use env::{Ctx, Settings};
use report::{Report, Row};

pub const HELP: &str = "
Runs `replica` (built with `cargo build --release -p replica-cli`) and Litestream
0.5.17 (the cached xtask install) on identical workloads, alternating them, and writes
a table (metric, replica, Litestream, ratio, target, pass/fail) with the machine and
settings to bench/results.md and bench/results.json.

Scenarios (all by default, in this order):
    flat      write throughput flat out: no replicator, replica, Litestream
    paced     commit latency at 1,000 commits/s, and replication lag under that load
    sparse    replication lag of sparse commits (one every 1-1.5 s)
    restore   restore time of a large database with an hour-equivalent of changes
    boot      boot restore of 16 missing shards: `replicate --config` vs a restore loop
    cost      idle and busy cost of 16 databases (requests, CPU, memory) on S3
    scale     1,000 databases in one process: lag and memory
    follow    read replicas: a follower's lag and requests, `restore --follow` vs
              `litestream restore -f`, source idle and at 10 commits/s on S3

The S3 runs use a private moto server and a counting proxy per tool, so both tools'
requests are counted the same way. The full run takes about 45 minutes on 2 cores
and is not part of CI.

OPTIONS:
    --quick          scaled-down run for development (under 5 minutes after the first
                     release build); writes bench/results-quick.{md,json}
    --only LIST      comma-separated scenarios, e.g. `--only sparse,boot`; writes
                     bench/results-partial.{md,json} unless --out is given
    --out DIR        write results.md/results.json (or the -quick/-partial names) into DIR
    --keep-work      keep the work directory (/tmp/replica-bench-<pid>) for inspection
";

const SCENARIOS: &[&str] = &[
    "flat", "paced", "sparse", "restore", "boot", "cost", "scale", "follow",
];

#[derive(Debug, Default)]
struct Options {
    quick: bool,
    only: Option<Vec<String>>,
    out: Option<PathBuf>,
    keep_work: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--keep-work" => o.keep_work = true,
            "--only" => {
                let v = it.next().context("--only needs a list of scenarios")?;
                let list: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
                for s in &list {
                    if !SCENARIOS.contains(&s.as_str()) {
                        bail!(
                            "unknown scenario `{s}`; expected some of {}",
                            SCENARIOS.join(",")
                        );
                    }
                }
                o.only = Some(list);
            }
            "--out" => o.out = Some(PathBuf::from(it.next().context("--out needs a directory")?)),
            other => bail!("unknown option `{other}` (see `cargo xtask help bench`)"),
        }
    }
    Ok(o)
}

/// The bench's work directory; removed on every exit path we control (a SIGKILLed run
/// leaves it, and the next run sweeps it).
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    fn create(keep: bool) -> Result<WorkDir> {
        let tmp = std::env::temp_dir();
        sweep_stale(&tmp);
        let path = tmp.join(format!("replica-bench-{}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path)?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir { path, keep })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!(
                "xtask bench: kept the work directory {}",
                self.path.display()
            );
        } else if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("xtask bench: could not remove {}: {e}", self.path.display());
        }
    }
}

/// Removes `replica-bench-<pid>` directories of runs that no longer exist.
fn sweep_stale(tmp: &Path) {
    let Ok(rd) = fs::read_dir(tmp) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("replica-bench-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!(
                "xtask bench: removing {} left by an earlier run",
                e.path().display()
            );
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Builds the release `replica` and copies it into the work directory, so a build
/// from another worktree sharing the target directory cannot swap it mid-run.
fn build_replica(work: &Path) -> Result<PathBuf> {
    util::step("building replica (cargo build --release -p replica-cli)");
    let out = util::cargo()
        .args([
            "build",
            "--release",
            "-p",
            "replica-cli",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!(
            "cargo build --release -p replica-cli failed ({})",
            out.status
        );
    }
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "replica")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .context("cargo build did not report the replica executable")?;
    let bin = work.join("bin");
    fs::create_dir_all(&bin)?;
    let dst = bin.join("replica");
    fs::copy(&exe, &dst).with_context(|| format!("copying {}", exe.display()))?;
    Ok(dst)
}

/// Starts a private moto server on a free port (the emulators' install, not their
/// shared instance, which tests may be using).
pub(crate) fn start_moto(work: &Path) -> Result<(Proc, SocketAddr)> {
    let bin = emulators::moto_server()?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut p = Proc::spawn(
        "moto_server",
        Command::new(bin).args(["-H", "127.0.0.1", "-p", &port.to_string()]),
        &work.join("moto.log"),
    )?;
    let t0 = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        p.ensure_running()?;
        if t0.elapsed() > Duration::from_secs(90) {
            bail!(
                "moto did not answer on {addr} within 90s:\n{}",
                p.log_tail(25)
            );
        }
        proc::sleep(Duration::from_millis(50))?;
    }
    Ok((p, addr))
}

fn first_line(cmd: &mut Command) -> String {
    cmd.stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn machine() -> Vec<(String, String)> {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let mem = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or("unknown".into(), |kb| {
            format!("{:.1} GiB", kb / 1024.0 / 1024.0)
        });
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| {
            l.strip_prefix("PRETTY_NAME=")
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let tmp = std::env::temp_dir();
    let fs_type = read("/proc/mounts")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && tmp.starts_with(f[1]))
                .then(|| (f[1].len(), format!("{} ({})", f[2], f[0])))
        })
        .max()
        .map_or("unknown".into(), |(_, t)| t);
    vec![
        ("CPU".into(), cpu),
        (
            "cores".into(),
            std::thread::available_parallelism().map_or("unknown".into(), |n| n.to_string()),
        ),
        ("RAM".into(), mem),
        (
            "kernel".into(),
            read("/proc/sys/kernel/osrelease").trim().to_string(),
        ),
        ("OS".into(), os),
        (format!("filesystem of {}", tmp.display()), fs_type),
    ]
}

fn versions(ctx: &Ctx) -> Vec<(String, String)> {
    let root = paths::workspace_root();
    let commit =
        first_line(
            Command::new("git")
                .arg("-C")
                .arg(&root)
                .args(["rev-parse", "--short", "HEAD"]),
        );
    let dirty = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["status", "--porcelain", "--", "crates"])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    vec![
        (
            "replica".into(),
            format!(
                "{} (git {commit}{}, release build)",
                first_line(Command::new(&ctx.replica).arg("version")),
                if dirty { ", crates/ modified" } else { "" }
            ),
        ),
        (
            "Litestream".into(),
            first_line(ctx.litestream_cmd().arg("version")),
        ),
        ("S3 emulator".into(), "moto server 5.2.5 (in memory), one per run".into()),
        (
            "writer".into(),
            first_line(Command::new("python3").args([
                "-c",
                "import sqlite3, sys; print('Python', sys.version.split()[0], '/ SQLite', sqlite3.sqlite_version)",
            ])),
        ),
        ("rustc".into(), first_line(Command::new("rustc").arg("--version"))),
    ]
}

fn settings(s: &Settings) -> Vec<(String, String)> {
    let kv = |k: &str, v: String| (k.to_string(), v);
    vec![
        kv(
            "mode",
            if s.quick {
                "--quick: durations and sizes scaled down for development; not the issue's measurement".into()
            } else {
                "full".into()
            },
        ),
        kv("repetitions", format!("{} per tool, tools alternating in order", s.reps)),
        kv(
            "both tools",
            "default settings, sync interval 1 s; a fresh database and a fresh replica per run; \
             databases in WAL mode, synchronous=NORMAL, busy_timeout 10 s, wal_autocheckpoint default"
                .into(),
        ),
        kv("flat out", format!("{} s per run", s.flat_secs)),
        kv("paced", format!("{} commits/s for {} s per run", s.paced_rate, s.paced_secs)),
        kv(
            "sparse",
            format!("{} commits per run, {}–{} s apart (seeded)", s.sparse_commits, s.sparse_gap.0, s.sparse_gap.1),
        ),
        kv(
            "restore",
            format!("{} MiB database, {} intervals of changes", s.restore_mib, s.restore_syncs),
        ),
        kv("boot restore", format!("{} shards × {} MiB", s.shards, s.shard_mib)),
        kv(
            "idle/busy",
            format!("{} databases, {} s, busy at {} commits/s per database", s.cost_dbs, s.cost_secs, s.busy_rate),
        ),
        kv(
            "scale",
            format!(
                "{} databases, 1 commit/s each, {} s warm-up + {} s measured",
                s.scale_dbs, s.scale_warmup_secs, s.scale_secs
            ),
        ),
    ]
}

fn general_notes(s: &Settings) -> Vec<String> {
    let mut n = vec![
        "Replication lag = the time the first replica object containing a commit was complete in the store \
         minus the time the commit returned. Every row the writer inserts carries a marker and its commit \
         counter; each new L0 object is decoded and its highest counter found, so the matching is exact and \
         identical for both tools. file://: a watcher polls each L0 directory every 5 ms (25 ms for the scale \
         run); both tools write a temporary file and rename it, so appearance means restorable. S3: the time \
         the emulator answered the PUT, recorded by the counting proxy."
            .to_string(),
        "Requests are counted by an HTTP proxy in front of moto, one per tool and run: PUT (including \
         multipart parts), LIST (GET on the bucket), GET, HEAD, DELETE, POST (multipart create/complete). \
         Bytes uploaded are PUT/POST request bodies as sent."
            .to_string(),
        "Write overhead and lag rows run on file:// and on S3 (moto behind the proxy). Restore time runs on \
         file:// only (the floor is a local copy; moto's own speed would dominate); the scale run is file:// \
         only (moto serves about 150–200 PUT/s, below 1,000 databases' one upload per second); idle and busy \
         cost are on S3, where requests can be counted."
            .to_string(),
        "Boot restore: `replica replicate --config` (restore_on_boot, 16 shards, 8 restores in parallel) \
         until its --exec service starts, against `litestream restore -config … -if-db-not-exists \
         -if-replica-exists <shard>` run for each shard in turn. Both read the same replica, written once by \
         `replica`; the service kills the sidecar as it starts, and anything the sidecar uploaded by then (snapshots of the restored shards) is deleted before the next run."
            .to_string(),
        "CPU and memory come from /proc (utime+stime, VmHWM) of the replicator process; neither tool forks."
            .to_string(),
    ];
    if s.quick {
        n.insert(
            0,
            "QUICK RUN: every duration and size is scaled down (see Settings) and each measurement runs once; \
             use it to check the harness, not to judge the targets."
                .to_string(),
        );
    }
    n
}

pub fn run(args: &[String]) -> Result<ExitCode> {
    let o = parse(args)?;
    proc::catch_interrupts()?;
    let t_start = Instant::now();
    let selected: Vec<&str> = match &o.only {
        Some(list) => SCENARIOS
            .iter()
            .copied()
            .filter(|s| list.iter().any(|l| l == s))
            .collect(),
        None => SCENARIOS.to_vec(),
    };
    let root = paths::workspace_root();
    let out_dir = o.out.clone().unwrap_or_else(|| root.join("bench"));
    let base = match (o.quick, o.only.is_some()) {
        (true, _) => "results-quick",
        (false, true) => "results-partial",
        (false, false) => "results",
    };
    let md_path = out_dir.join(format!("{base}.md"));
    let json_path = out_dir.join(format!("{base}.json"));

    let work = WorkDir::create(o.keep_work)?;
    let replica = build_replica(&work.path)?;
    let ls = litestream::ensure()?;
    util::step("starting a private S3 emulator (moto)");
    let (moto, moto_addr) = start_moto(&work.path)?;
    let s = Settings::new(o.quick);
    let writer = root.join("bench").join("writer.py");
    if !writer.exists() {
        bail!("{} is missing", writer.display());
    }
    let mut ctx = Ctx::new(
        s.clone(),
        replica,
        ls,
        writer,
        work.path.clone(),
        moto,
        moto_addr,
    )?;
    ctx.keep = o.keep_work;

    let mut report = Report {
        title: format!(
            "replica vs Litestream 0.5.17{}",
            if o.quick {
                " — QUICK run (scaled down, not the issue's measurement)"
            } else {
                ""
            }
        ),
        machine: machine(),
        versions: versions(&ctx),
        settings: settings(&s),
        notes: general_notes(&s),
        ..Report::default()
    };
    for name in selected {
        util::step(&format!("bench: {name}"));
        let t0 = Instant::now();
        let result: Result<(Vec<Row>, Vec<String>)> = match name {
            "flat" => write::flat(&ctx).map(|r| (r, vec![])),
            "paced" => write::paced(&ctx).map(|r| (r, vec![])),
            "sparse" => write::sparse(&ctx).map(|r| (r, vec![])),
            "restore" => restore::restore(&ctx),
            "boot" => restore::boot(&ctx).map(|r| (r, vec![])),
            "cost" => cost::idle_busy(&ctx),
            "scale" => cost::scale(&ctx),
            "follow" => follow::follow(&ctx).map(|r| (r, vec![])),
            _ => unreachable!("scenario names are checked when parsing"),
        };
        match result {
            Ok((rows, notes)) => {
                eprintln!(
                    "xtask bench: {name} done in {:.0}s",
                    t0.elapsed().as_secs_f64()
                );
                report.rows.extend(rows);
                report.notes.extend(notes);
            }
            Err(e) => {
                proc::check_interrupted()?;
                eprintln!("xtask bench: {name} FAILED: {e:#}");
                report.errors.push((name.to_string(), format!("{e:#}")));
            }
        }
        report.wall_seconds = t_start.elapsed().as_secs_f64();
        // Results so far, in case a later scenario takes the machine down.
        report.write(&md_path, &json_path)?;
    }
    report.wall_seconds = t_start.elapsed().as_secs_f64();
    report.write(&md_path, &json_path)?;
    drop(ctx);
    drop(work);
    println!("{}", report.markdown());
    eprintln!(
        "xtask bench: wrote {} and {} ({:.1} min)",
        md_path.display(),
        json_path.display(),
        report.wall_seconds / 60.0
    );
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
