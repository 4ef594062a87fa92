//! `replica restore --follow`: restore (or resume), then keep each database up to date
//! with its replica until SIGINT/SIGTERM (see `replica_core::restore::follow`). With
//! `--config`, every configured database is followed by one process: a read replica
//! of every shard.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use replica::Config;
use replica_core::error::Chain;
use replica_core::replica::Replica;
use replica_core::restore::follow::{FollowOptions, Follower};
use replica_core::restore::{RestoreOptions, Target};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::backends;
use crate::cli::RestoreArgs;
use crate::exit::usage;

pub async fn run(a: RestoreArgs, template: RestoreOptions) -> anyhow::Result<ExitCode> {
    if template.target != Target::Latest || a.dry_run {
        return Err(usage(
            "--follow restores the latest state and keeps it current; it takes no --txid, --timestamp, --generation or --dry-run",
        ));
    }
    let databases = match (&a.output, &a.config) {
        (Some(out), _) => {
            let [url] = a.targets.as_slice() else {
                return Err(usage(
                    "restore -o OUTPUT --follow needs exactly one REPLICA_URL",
                ));
            };
            vec![(out.clone(), url.clone())]
        }
        (None, Some(file)) => {
            let config = Config::load(file)?;
            let only: Vec<PathBuf> = a.targets.iter().map(PathBuf::from).collect();
            let picked: Vec<_> = config
                .databases
                .iter()
                .filter(|d| {
                    only.is_empty() || only.iter().any(|p| d.path == *p || d.path.ends_with(p))
                })
                .map(|d| (d.path.clone(), d.url.clone()))
                .collect();
            if picked.is_empty() {
                return Err(usage(format!(
                    "no database of {} to follow",
                    file.display()
                )));
            }
            picked
        }
        (None, None) => {
            return Err(usage(
                "restore --follow needs -o OUTPUT and a REPLICA_URL, or --config FILE",
            ));
        }
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut tasks = Vec::with_capacity(databases.len());
    for (output, url) in databases {
        let opts = FollowOptions {
            restore: RestoreOptions {
                output: output.clone(),
                ..template.clone()
            },
            interval: a.follow_interval,
        };
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let result = async {
                let replica = Replica::new(backends::open(&url).await?);
                // A signal during the first restore drops it (nothing is left at the
                // output); after it, the follower stops cleanly.
                let follower = tokio::select! {
                    f = Follower::start(&replica, &opts) => f.with_context(|| format!("restore of {} failed", output.display()))?,
                    _ = stop.wait_for(|s| *s) => anyhow::bail!("stopped before the restore of {} finished; nothing was written there", output.display()),
                };
                tracing::info!(path = %output.display(), url = %replica.url(), txid = format!("{:016x}", follower.txid()), interval = %humantime::format_duration(opts.interval), "following");
                let stopped = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                follower
                    .run(opts.interval, stopped)
                    .await
                    .with_context(|| format!("following {} stopped", output.display()))
            }
            .await;
            (output, result)
        }));
    }
    let mut all = Box::pin(async {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await);
        }
        out
    });
    let results = tokio::select! {
        r = &mut all => r,
        _ = term.recv() => { let _ = stop_tx.send(true); all.await }
        _ = int.recv() => { let _ = stop_tx.send(true); all.await }
    };
    let mut failed = None;
    for r in results {
        match r {
            Ok((_, Ok(_))) => {}
            Ok((output, Err(e))) => {
                tracing::error!(path = %output.display(), error = %format!("{e:#}"), "follower failed");
                failed.get_or_insert(e);
            }
            Err(e) => {
                failed.get_or_insert(anyhow::anyhow!("a follower task failed: {}", Chain(&e)));
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}
