use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use replica::Deployment;
use replica_core::replica::Replica;
use replica_core::restore::{
    self, IntegrityCheck, RestoreError, RestoreOptions, RestoreOutcome, Target, V3Target,
};
use tokio::signal::unix::{SignalKind, signal};

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
            )
            .await
        }
        (None, Some(cfg)) => restore_config(cfg, &a.targets, template).await,
        (None, None) => Err(usage(
            "restore needs -o/--output OUTPUT and a REPLICA_URL, or --config FILE (or REPLICA_CONFIG)",
        )),
    }
}

async fn restore_one(url: &str, opts: RestoreOptions) -> anyhow::Result<ExitCode> {
    let replica = Replica::new(backends::open(url).await?);
    let started = std::time::Instant::now();
    let outcome = match restore::restore(&replica, &opts).await {
        Err(RestoreError::V3(e)) if e.is_usage() => return Err(usage(e.to_string())),
        r => r.with_context(|| format!("restore of {} failed", opts.output.display()))?,
    };
    log_outcome(&opts.output, &outcome, started);
    Ok(ExitCode::SUCCESS)
}

async fn restore_config(
    file: &std::path::Path,
    only: &[String],
    template: RestoreOptions,
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
    let started = std::time::Instant::now();
    for (path, outcome) in dep.restore(&only, template).await? {
        log_outcome(&path, &outcome, started);
    }
    Ok(ExitCode::SUCCESS)
}

fn log_outcome(path: &std::path::Path, outcome: &RestoreOutcome, started: std::time::Instant) {
    match outcome {
        RestoreOutcome::Restored {
            txid,
            files,
            bytes_downloaded,
        } => tracing::info!(
            output = %path.display(),
            txid = format!("{txid:016x}"),
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
