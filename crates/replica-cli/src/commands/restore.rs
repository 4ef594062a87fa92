use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use replica::Deployment;
use replica_core::replica::Replica;
use replica_core::restore::{
    self, IntegrityCheck, RestoreError, RestoreOptions, RestoreOutcome, Target, V3Target,
};
use serde_json::Value;
use tokio::signal::unix::{SignalKind, signal};

use super::generations::rfc3339;
use crate::backends;
use crate::cli::{IntegrityArg, RestoreArgs};
use crate::exit::usage;

pub async fn run(a: RestoreArgs) -> anyhow::Result<ExitCode> {
    let template = RestoreOptions {
        output: PathBuf::new(),
        target: match (a.generation, a.txid, a.timestamp) {
            (Some(generation), _, timestamp) => Target::V3(V3Target {
                generation: Some(generation),
                index: a.index,
                timestamp,
            }),
            (None, Some(t), _) => Target::Txid(t),
            (None, None, Some(ts)) => Target::Timestamp(ts),
            (None, None, None) => Target::Latest,
        },
        parallelism: usize::from(a.parallelism),
        integrity: match a.integrity_check {
            IntegrityArg::None => IntegrityCheck::None,
            IntegrityArg::Quick => IntegrityCheck::Quick,
            IntegrityArg::Full => IntegrityCheck::Full,
        },
        if_db_not_exists: a.if_db_not_exists,
        if_replica_exists: a.if_replica_exists,
        // A one-off restore leaves no spool behind; the deployment's boot restore does.
        seed_spool: false,
        // With --config, the file's restore_mode applies unless --mode is given.
        mode: a.mode,
    };
    if a.follow {
        return super::follow::run(a, template).await;
    }
    // A signal drops the restore: its downloads stop and its work directory is
    // removed, so nothing is left beside the output.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        r = restore_chosen(a, template) => r,
        _ = term.recv() => Err(anyhow::anyhow!("restore interrupted by SIGTERM; nothing was written at the output")),
        _ = int.recv() => Err(anyhow::anyhow!("restore interrupted by SIGINT; nothing was written at the output")),
    }
}

async fn restore_chosen(a: RestoreArgs, template: RestoreOptions) -> anyhow::Result<ExitCode> {
    let output = Output {
        dry_run: a.dry_run,
        json: a.json,
    };
    // `-o` means one database from one URL, whatever REPLICA_CONFIG says.
    match (&a.output, &a.config) {
        (Some(out), _) => {
            let [url] = a.targets.as_slice() else {
                return Err(usage("restore -o OUTPUT needs exactly one REPLICA_URL"));
            };
            restore_one(
                url,
                RestoreOptions {
                    output: out.clone(),
                    ..template
                },
                output,
            )
            .await
        }
        (None, Some(cfg)) => restore_config(cfg, &a.targets, template, output).await,
        (None, None) => Err(usage(
            "restore needs -o/--output OUTPUT and a REPLICA_URL, or --config FILE (or REPLICA_CONFIG)",
        )),
    }
}

async fn restore_one(url: &str, opts: RestoreOptions, out: Output) -> anyhow::Result<ExitCode> {
    let replica = Replica::new(backends::open(url).await?);
    if out.dry_run {
        let plan = plan_one(&replica, &opts).await?;
        out.print(&[(opts.output.clone(), plan)]);
        return Ok(ExitCode::SUCCESS);
    }
    let started = std::time::Instant::now();
    let progress = Arc::new(restore::Progress::default());
    let bar = ProgressBar::start(&progress);
    let result = restore::restore_with_progress(&replica, &opts, &progress).await;
    bar.finish().await;
    let outcome = match result {
        Err(RestoreError::V3(e)) if e.is_usage() => return Err(usage(e.to_string())),
        r => r.with_context(|| format!("restore of {} failed", opts.output.display()))?,
    };
    log_outcome(&opts.output, &outcome, started);
    if out.json {
        out.print(&[(opts.output.clone(), outcome_json(&outcome, started))]);
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar (bytes, rate, ETA) on stderr for a restore that takes more than a
/// second, when stderr is a terminal; nothing otherwise.
struct ProgressBar {
    done: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ProgressBar {
    fn start(progress: &Arc<restore::Progress>) -> Self {
        let (done, mut finished) = tokio::sync::watch::channel(false);
        let task = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let progress = Arc::clone(progress);
            tokio::spawn(async move {
                let wait = finished.wait_for(|d| *d);
                if tokio::time::timeout(std::time::Duration::from_secs(1), wait)
                    .await
                    .is_ok()
                {
                    return;
                }
                let style = indicatif::ProgressStyle::with_template(
                    "{bytes}/{total_bytes} [{bar:30}] {binary_bytes_per_sec}, eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
                let bar = indicatif::ProgressBar::new(0).with_style(style);
                loop {
                    bar.set_length(progress.total_bytes.load(Ordering::Relaxed));
                    bar.set_position(progress.read_bytes.load(Ordering::Relaxed));
                    let tick = finished.wait_for(|d| *d);
                    if tokio::time::timeout(std::time::Duration::from_millis(100), tick)
                        .await
                        .is_ok()
                    {
                        break;
                    }
                }
                bar.finish_and_clear();
            })
        });
        ProgressBar { done, task }
    }

    async fn finish(self) {
        let _ = self.done.send(true);
        if let Some(t) = self.task {
            let _ = t.await;
        }
    }
}

/// How the result is shown.
#[derive(Debug, Clone, Copy)]
struct Output {
    dry_run: bool,
    json: bool,
}

impl Output {
    /// One JSON object for one database, an array for several; text otherwise.
    fn print(&self, results: &[(PathBuf, Value)]) {
        if self.json {
            let doc = match results {
                [(_, one)] => one.clone(),
                many => Value::Array(many.iter().map(|(_, v)| v.clone()).collect()),
            };
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            return;
        }
        for (path, v) in results {
            print!("{}", plan_text(path, v));
        }
    }
}

/// What a restore into `opts.output` would do, as JSON: nothing is written.
async fn plan_one(replica: &Replica, opts: &RestoreOptions) -> anyhow::Result<Value> {
    let output = opts.output.display().to_string();
    let mut v = match restore::dry_run(replica, opts).await {
        Err(RestoreError::V3(e)) if e.is_usage() => return Err(usage(e.to_string())),
        r => match r.with_context(|| format!("planning the restore of {output}"))? {
            restore::DryRun::Plan(p) => {
                let mut v = serde_json::to_value(p)?;
                v["action"] = Value::from("restore");
                v
            }
            restore::DryRun::Skip(skip) => {
                let mut v = outcome_json(&skip, std::time::Instant::now());
                v["url"] = Value::from(replica.url());
                v
            }
        },
    };
    v["output"] = Value::from(output);
    Ok(v)
}

fn plan_text(path: &std::path::Path, v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
    if s("action") != "restore" {
        return format!("{}: {}\n", path.display(), s("action"));
    }
    let mut out = format!(
        "{}: restore from {} ({}): {} objects, {} bytes, up to TXID {} ({})\n",
        path.display(),
        s("url"),
        s("format"),
        v["objects"],
        v["bytes"],
        s("txid"),
        s("time"),
    );
    for f in v["files"].as_array().into_iter().flatten() {
        let g = |k: &str| f[k].as_str().unwrap_or("-").to_owned();
        out.push_str(&format!(
            "  L{} {}-{} {:>12} {} {}\n",
            f["level"],
            g("min_txid"),
            g("max_txid"),
            f["size"],
            g("created"),
            g("key")
        ));
    }
    if s("format") == "litestream-0.3" {
        out.push_str(&format!(
            "  generation {} up to WAL index {}\n",
            s("generation"),
            s("index")
        ));
    }
    out
}

/// A restore's result as JSON (also `verify`'s report).
pub(super) fn outcome_json(outcome: &RestoreOutcome, started: std::time::Instant) -> Value {
    let elapsed = started.elapsed().as_secs_f64();
    match outcome {
        RestoreOutcome::Restored {
            txid,
            time,
            files,
            bytes_downloaded,
        } => serde_json::json!({
            "action": "restored",
            "txid": format!("{txid:016x}"),
            "time": time.map(rfc3339),
            "files": files,
            "bytes_downloaded": bytes_downloaded,
            "elapsed_seconds": elapsed,
        }),
        RestoreOutcome::RestoredV3 {
            generation,
            index,
            files,
            bytes_downloaded,
        } => serde_json::json!({
            "action": "restored",
            "generation": generation.to_string(),
            "index": format!("{index:08x}"),
            "files": files,
            "bytes_downloaded": bytes_downloaded,
            "elapsed_seconds": elapsed,
        }),
        RestoreOutcome::OutputExists => serde_json::json!({ "action": "skip: the output exists" }),
        RestoreOutcome::NoReplica => serde_json::json!({ "action": "skip: no replica" }),
    }
}

async fn restore_config(
    file: &std::path::Path,
    only: &[String],
    template: RestoreOptions,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let dep = Deployment::from_config(file)?;
    let only: Vec<PathBuf> = only.iter().map(PathBuf::from).collect();
    for p in &only {
        if !dep
            .config
            .databases
            .iter()
            .any(|d| d.path == *p || d.path.ends_with(p))
        {
            return Err(usage(format!(
                "{} is not a database of {}",
                p.display(),
                file.display()
            )));
        }
    }
    let only: Vec<PathBuf> = only
        .iter()
        .filter_map(|p| {
            dep.config
                .databases
                .iter()
                .find(|d| d.path == *p || d.path.ends_with(p))
                .map(|d| d.path.clone())
        })
        .collect();
    if output.dry_run {
        let mut plans = Vec::new();
        for d in &dep.config.databases {
            if !only.is_empty() && !only.contains(&d.path) {
                continue;
            }
            let replica = Replica::new(backends::open(&d.url).await?);
            let opts = RestoreOptions {
                output: d.path.clone(),
                mode: template.mode.or(dep.config.restore_mode),
                ..template.clone()
            };
            plans.push((d.path.clone(), plan_one(&replica, &opts).await?));
        }
        output.print(&plans);
        return Ok(ExitCode::SUCCESS);
    }
    let started = std::time::Instant::now();
    let mut results = Vec::new();
    for (path, outcome) in dep.restore(&only, template).await? {
        log_outcome(&path, &outcome, started);
        let mut v = outcome_json(&outcome, started);
        v["output"] = Value::from(path.display().to_string());
        results.push((path, v));
    }
    if output.json {
        output.print(&results);
    }
    Ok(ExitCode::SUCCESS)
}

fn log_outcome(path: &std::path::Path, outcome: &RestoreOutcome, started: std::time::Instant) {
    match outcome {
        RestoreOutcome::Restored {
            txid,
            time,
            files,
            bytes_downloaded,
        } => tracing::info!(
            output = %path.display(),
            txid = format!("{txid:016x}"),
            time = time.map(rfc3339).as_deref().unwrap_or("unknown"),
            files,
            bytes_downloaded,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "restore complete"
        ),
        RestoreOutcome::RestoredV3 {
            generation,
            index,
            files,
            bytes_downloaded,
        } => tracing::info!(
            output = %path.display(),
            generation = %generation,
            index = format!("{index:08x}"),
            files,
            bytes_downloaded,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "restore complete (from Litestream 0.3 generation)"
        ),
        RestoreOutcome::OutputExists | RestoreOutcome::NoReplica => {}
    }
}
