//! Restore time (one large database with an hour-equivalent of changes) and boot
//! restore of missing shards. Each data set is written once, by `replica`, and then
//! restored from the same replica by both tools (the format is shared).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::env::{self, Backend, Ctx, Dest, Tool, ToolOpts};
use super::report::{Row, Samples, Unit};
use crate::proc::{self, Proc};

/// Sync interval while writing the restore data set: 50× faster than the default 1 s,
/// so an hour of one-change-per-second history is written in 72 s.
const GEN_SYNC_MS: u64 = 20;
const TIME_SCALE: u64 = 1000 / GEN_SYNC_MS;

fn timed(name: &str, cmd: &mut Command, log: &Path, timeout: Duration) -> Result<f64> {
    let t0 = Instant::now();
    let mut p = Proc::spawn(name, cmd, log)?;
    let st = p.wait(timeout)?;
    let secs = t0.elapsed().as_secs_f64();
    if !st.success() {
        bail!(
            "{name} failed ({st}); last lines of {}:\n{}",
            log.display(),
            p.log_tail(25)
        );
    }
    Ok(secs)
}

/// Where this VM's hypervisor counts the guest memory handed back to it.
const REPORTED_KIB: &str = "/sys/module/page_reporting/parameters/reported_kib";

/// Waits until the guest has handed its free memory back to the host (free page
/// reporting, as on Firecracker VMs), so every timed run starts from the same state.
/// Writing into page-cache memory the host has taken back costs a restore about a
/// second per GiB more than writing into memory freed a moment earlier, and `cp` does
/// not pay it; without this wait the result depended on how long ago the previous run
/// removed its output. Off such a VM this returns at once.
fn settle_memory() -> Result<()> {
    let read = || {
        fs::read_to_string(REPORTED_KIB)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let Some(mut last) = read() else {
        return Ok(());
    };
    // Memory is reported a couple of seconds after it is freed.
    proc::sleep(Duration::from_secs(3))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        proc::sleep(Duration::from_secs(1))?;
        let now = read().unwrap_or(last);
        if now == last {
            break;
        }
        last = now;
    }
    Ok(())
}

fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Scaled engine flags for the data set, passed only if this `replica` has them
/// (compaction levels and L0 retention arrived with the compaction work): replica's
/// own defaults, `--levels 30s,5m,1h --l0-retention 1h`, sped up like the sync
/// interval, so the replica holds what an hour at the defaults would leave.
fn scaled_opts(ctx: &Ctx) -> (ToolOpts, String) {
    let mut args = vec!["--sync-interval".to_string(), format!("{GEN_SYNC_MS}ms")];
    let mut desc = format!("sync interval {GEN_SYNC_MS} ms");
    let scale = |secs: u64| format!("{}ms", secs * 1000 / TIME_SCALE);
    if ctx.replica_has_flag("--levels") {
        let levels = [30, 300, 3600].map(scale).join(",");
        desc.push_str(&format!(", --levels {levels} (30s,5m,1h scaled)"));
        args.extend(["--levels".into(), levels]);
    }
    if ctx.replica_has_flag("--l0-retention") {
        let r = scale(3600);
        desc.push_str(&format!(", --l0-retention {r} (1h scaled)"));
        args.extend(["--l0-retention".into(), r]);
    }
    (
        ToolOpts {
            args,
            ..ToolOpts::default()
        },
        desc,
    )
}

/// The highest TXID of any LTX file in the `app` replica under `root`.
fn max_txid(root: &Path) -> u64 {
    let mut best = 0;
    let Ok(levels) = fs::read_dir(root.join("app").join("ltx")) else {
        return 0;
    };
    for l in levels.flatten() {
        let Ok(files) = fs::read_dir(l.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if !env::is_ltx_name(&name) {
                continue;
            }
            let max = name
                .trim_end_matches(".ltx")
                .split_once('-')
                .and_then(|(_, m)| u64::from_str_radix(m, 16).ok())
                .unwrap_or(0);
            best = best.max(max);
        }
    }
    best
}

fn count_files(root: &Path) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let Ok(levels) = fs::read_dir(root.join("app").join("ltx")) else {
        return out;
    };
    let mut levels: Vec<_> = levels.flatten().collect();
    levels.sort_by_key(|e| e.file_name());
    for l in levels {
        let n = fs::read_dir(l.path()).map(|d| d.count()).unwrap_or(0);
        out.push((format!("L{}", l.file_name().to_string_lossy()), n));
    }
    out
}

pub fn restore(ctx: &Ctx) -> Result<(Vec<Row>, Vec<String>)> {
    let s = &ctx.s;
    let dir = ctx.dir("restore")?;
    let db = dir.join("app.db");
    let dbs = [db.clone()];
    let db_arg = db.display().to_string();
    let t0 = Instant::now();
    ctx.writer_run(
        &dir,
        &["fill", &db_arg, "--mib", &s.restore_mib.to_string()],
        Duration::from_secs(1800),
    )?;
    eprintln!(
        "xtask bench: restore data set: {} MiB database filled in {:.1}s",
        s.restore_mib,
        t0.elapsed().as_secs_f64()
    );

    // History: `restore_syncs` intervals with a change each, written time-scaled.
    let dest = Dest::new(ctx, Backend::File, &dir)?;
    let (opts, desc) = scaled_opts(ctx);
    let mut rep = env::start_tool(ctx, Tool::Replica, &dbs, &dest, &dir, &opts)?;
    env::wait_ready(&mut rep, &dest, &dbs, Duration::from_secs(900))?;
    // One commit per interval; run until the replica holds `restore_syncs` TXIDs of
    // changes on top of the snapshot (TXIDs, not L0 files: compaction may merge those).
    let rate = 1000.0 / GEN_SYNC_MS as f64;
    let churn_t0 = Instant::now();
    let mut churn = ctx.writer_spawn(
        "writer.py churn",
        &[
            "churn",
            &db_arg,
            "--rate",
            &rate.to_string(),
            "--seconds",
            "100000",
            "--rows-per-commit",
            "4",
        ],
        &dir.join("churn.log"),
    )?;
    let root = dir.join("replica");
    let target = s.restore_syncs + 1;
    while max_txid(&root) < target {
        churn.ensure_running()?;
        rep.ensure_running()?;
        if churn_t0.elapsed() > Duration::from_secs(1800) {
            bail!("the restore data set did not reach {target} TXIDs in 30 min");
        }
        proc::sleep(Duration::from_millis(100))?;
    }
    churn.kill()?;
    let churn_secs = churn_t0.elapsed().as_secs_f64();
    proc::sleep(Duration::from_secs(1))?;
    env::stop_tool(&mut rep)?;
    ctx.writer_run(&dir, &["checkpoint", &db_arg], Duration::from_secs(300))?;
    let src_size = fs::metadata(&db)?.len();
    let files = count_files(&dir.join("replica"));
    let listing = files
        .iter()
        .map(|(l, n)| format!("{l}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    eprintln!(
        "xtask bench: restore data set ready after {:.1}s: {} MiB, replica files {listing}",
        t0.elapsed().as_secs_f64(),
        src_size >> 20
    );

    let url = dest.url("app");
    let out = dir.join("restored.db");
    let out_arg = out.display().to_string();
    let log = dir.join("restore.log");
    let timeout = Duration::from_secs(3600);
    let (mut floor, mut ours, mut theirs) =
        (Samples::default(), Samples::default(), Samples::default());
    let (mut ours_x, mut theirs_x) = (Samples::default(), Samples::default());
    // Our default (`PRAGMA quick_check` after the restore), as its own row.
    let mut checked = Samples::default();
    for r in 0..s.reps {
        // The floor: write the database file once, durably.
        remove(&out)?;
        settle_memory()?;
        let f = timed(
            "cp + sync",
            Command::new("sh").args([
                "-c",
                "cp \"$1\" \"$2\" && sync \"$2\"",
                "sh",
                &db_arg,
                &out_arg,
            ]),
            &log,
            timeout,
        )?;
        remove(&out)?;
        floor.push(f);
        for tool in Tool::order(r) {
            settle_memory()?;
            let secs = match tool {
                // Same work as Litestream's default: no integrity check afterwards.
                Tool::Replica => timed(
                    "replica restore",
                    ctx.replica_cmd()
                        .args(["restore", "--integrity-check", "none", "-o", &out_arg])
                        .arg(&url),
                    &log,
                    timeout,
                )?,
                Tool::Litestream => timed(
                    "litestream restore",
                    ctx.litestream_cmd()
                        .args(["restore", "-o", &out_arg])
                        .arg(&url),
                    &log,
                    timeout,
                )?,
            };
            let size = fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            if size != src_size {
                bail!(
                    "{} restored {size} bytes, the source has {src_size}",
                    tool.name()
                );
            }
            remove(&out)?;
            eprintln!(
                "xtask bench: restore with {}: {secs:.2}s (floor {f:.2}s)",
                tool.name()
            );
            if tool == Tool::Replica {
                settle_memory()?;
                let secs = timed(
                    "replica restore (quick_check)",
                    ctx.replica_cmd()
                        .args(["restore", "-o", &out_arg])
                        .arg(&url),
                    &log,
                    timeout,
                )?;
                remove(&out)?;
                eprintln!("xtask bench: restore with replica and quick_check: {secs:.2}s");
                checked.push(secs);
            }
            match tool {
                Tool::Replica => {
                    ours.push(secs);
                    ours_x.push(secs / f);
                }
                Tool::Litestream => {
                    theirs.push(secs);
                    theirs_x.push(secs / f);
                }
            }
        }
    }
    let fl = floor.median().unwrap_or(0.0);
    let section = format!(
        "restore time ({:.0} MiB database + {} sync intervals of changes, file://)",
        src_size as f64 / (1024.0 * 1024.0),
        s.restore_syncs
    );
    let rows = vec![
        Row::info(&section, "restore time", "file", Unit::Seconds)
            .values(ours, theirs)
            .target_factor("≥ 5× faster than Litestream", 5.0),
        Row::info(
            &section,
            &format!("restore time ÷ floor (cp + fsync: {fl:.2} s)"),
            "file",
            Unit::Times,
        )
        .values(ours_x, theirs_x)
        .target("≤ 2× the floor", |v| v <= 2.0),
        Row::info(
            &section,
            "restore time with `PRAGMA quick_check` (replica's default)",
            "file",
            Unit::Seconds,
        )
        .values(checked, Samples::default()),
    ];
    ctx.done_with(&dir)?;
    let note = format!(
        "Restore data set: one database filled with random 1000-byte rows, replicated by `replica` \
         ({desc}) while a writer updated 4 random rows {rate:.0} times a second, {churn_secs:.0} s until the replica \
         held {} TXIDs after the snapshot (an hour at one sync with changes per second when 3600); \
         replica files afterwards: {listing}. Both tools restore that same replica \
         (`replica restore --integrity-check none`, `litestream restore`, whose default is no check); \
         the floor is `cp` of the checkpointed source followed by `sync` of the copy. Page cache warm for all three. \
         On a VM with free page reporting every timed run (floor, both tools, boot runs) starts once the guest has \
         handed its free memory back to the host: a buffered write into such memory costs about a second per GiB \
         more (`cp` does not pay it), and without the wait the result depended on how recently the previous run \
         freed its output.",
        s.restore_syncs
    );
    Ok((rows, vec![note]))
}

// ---------------------------------------------------------------------------------
// boot restore of shards

fn shard_paths(data: &Path, n: usize) -> Vec<PathBuf> {
    (0..n).map(|i| data.join(format!("shard_{i}.db"))).collect()
}

/// Removes the shards and everything either tool keeps beside them.
fn clear_data(data: &Path) -> Result<()> {
    if data.exists() {
        fs::remove_dir_all(data).with_context(|| format!("removing {}", data.display()))?;
    }
    fs::create_dir_all(data)?;
    Ok(())
}

fn boot_once(ctx: &Ctx, backend: Backend) -> Result<(Samples, Samples)> {
    let s = &ctx.s;
    let dir = ctx.dir(&format!("boot-{}", backend.name()))?;
    let data = dir.join("data");
    clear_data(&data)?;
    let shards = shard_paths(&data, s.shards);
    for sh in &shards {
        ctx.writer_run(
            &dir,
            &[
                "fill",
                &sh.display().to_string(),
                "--mib",
                &s.shard_mib.to_string(),
            ],
            Duration::from_secs(600),
        )?;
    }
    let dest = Dest::new(ctx, backend, &dir)?;
    let template = data.join("shard_{index}.db");
    let cfg = dir.join("replica.yml");
    fs::write(
        &cfg,
        env::replica_config(&dest, &[], true, Some((s.shards, &template))),
    )?;
    let ls_cfg = dir.join("litestream.yml");
    fs::write(&ls_cfg, env::litestream_config(&dest, &shards))?;

    // The replica both tools restore from: `replica` uploads every shard's snapshot.
    let t0 = Instant::now();
    let mut p = Proc::spawn(
        "replica replicate --config",
        ctx.replica_cmd().args(["replicate", "--config"]).arg(&cfg),
        &dir.join("setup.log"),
    )?;
    env::wait_ready(&mut p, &dest, &shards, Duration::from_secs(1800))?;
    env::stop_tool(&mut p)?;
    eprintln!(
        "xtask bench: boot data set [{}]: {} × {} MiB replicated in {:.1}s",
        backend.name(),
        s.shards,
        s.shard_mib,
        t0.elapsed().as_secs_f64()
    );
    let before = dest.file_listing();
    let log = dir.join("boot.log");
    let (mut ours, mut theirs) = (Samples::default(), Samples::default());
    for r in 0..s.reps {
        for tool in Tool::order(r) {
            clear_data(&data)?;
            settle_memory()?;
            let puts_before = dest.proxy.as_ref().map_or(0, |p| p.len());
            let secs = match tool {
                Tool::Replica => {
                    // The "service" records when it starts and ends the sidecar at once.
                    let marker = dir.join("service-started");
                    remove(&marker)?;
                    let exec = format!(
                        "sh -c 'date +%s%N > {}; kill -KILL $PPID'",
                        marker.display()
                    );
                    let start = super::lag::now_ns();
                    let mut p = Proc::spawn(
                        "replica replicate --config --exec",
                        ctx.replica_cmd()
                            .args(["replicate", "--config"])
                            .arg(&cfg)
                            .args(["--exec", &exec]),
                        &log,
                    )?;
                    p.wait(Duration::from_secs(3600))?;
                    let started: i64 = fs::read_to_string(&marker)
                        .ok()
                        .and_then(|t| t.trim().parse().ok())
                        .with_context(|| {
                            format!(
                                "the service never started; last lines of {}:\n{}",
                                log.display(),
                                p.log_tail(25)
                            )
                        })?;
                    (started - start) as f64 / 1e9
                }
                Tool::Litestream => {
                    let t = Instant::now();
                    for sh in &shards {
                        let mut cmd = ctx.litestream_cmd();
                        cmd.args(["restore", "-config"])
                            .arg(&ls_cfg)
                            .args(["-if-db-not-exists", "-if-replica-exists"])
                            .arg(sh);
                        timed(
                            "litestream restore",
                            &mut cmd,
                            &log,
                            Duration::from_secs(3600),
                        )?;
                    }
                    t.elapsed().as_secs_f64()
                }
            };
            for sh in &shards {
                if !sh.exists() {
                    bail!("{} did not restore {}", tool.name(), sh.display());
                }
            }
            // Every run restores the same replica: `replica`, once the service has
            // started, snapshots what it restored (no local history to continue), and
            // may upload some of that before it is killed. Take it out again.
            let removed = dest.remove_added(ctx, &before, puts_before)?;
            if removed > 0 {
                eprintln!(
                    "xtask bench: removed {removed} object(s) {} uploaded after the service started",
                    tool.name()
                );
            }
            eprintln!(
                "xtask bench: boot restore [{}], {}: {secs:.2}s",
                backend.name(),
                tool.name()
            );
            match tool {
                Tool::Replica => ours.push(secs),
                Tool::Litestream => theirs.push(secs),
            }
        }
    }
    drop(dest);
    ctx.done_with(&dir)?;
    Ok((ours, theirs))
}

pub fn boot(ctx: &Ctx) -> Result<Vec<Row>> {
    let s = &ctx.s;
    let section = format!(
        "boot restore of shards ({} × {} MiB missing locally)",
        s.shards, s.shard_mib
    );
    let mut rows = Vec::new();
    for backend in [Backend::File, Backend::S3] {
        if backend == Backend::S3 {
            ctx.reset_s3()?;
        }
        let (ours, theirs) = boot_once(ctx, backend)?;
        rows.push(
            Row::info(
                &section,
                "time until the service starts",
                backend.name(),
                Unit::Seconds,
            )
            .values(ours, theirs)
            .target_factor("≥ 4× faster than the litestream restore loop", 4.0),
        );
    }
    Ok(rows)
}
