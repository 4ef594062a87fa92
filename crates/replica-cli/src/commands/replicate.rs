use std::process::ExitCode;

use anyhow::Context;
use replica_core::engine::{EngineConfig, Replicator};
use replica_core::replica::Replica;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::backends;
use crate::cli::ReplicateArgs;

pub async fn run(a: ReplicateArgs) -> anyhow::Result<ExitCode> {
    let client = backends::open(&a.replica_url).await?;
    let cfg = EngineConfig {
        sync_interval: a.sync_interval,
        snapshot_interval: a.snapshot_interval,
        retention: a.retention,
        ..EngineConfig::default()
    };
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let replicator = Replicator::start(&a.db_path, Replica::new(client), cfg)
        .await
        .with_context(|| format!("cannot replicate {}", a.db_path.display()))?;

    let failed = tokio::select! {
        _ = sigint.recv() => { info!("SIGINT: flushing and stopping"); false }
        _ = sigterm.recv() => { info!("SIGTERM: flushing and stopping"); false }
        _ = replicator.failed() => true,
    };
    // A second signal abandons the flush; what is spooled stays for the next start.
    let flush = replicator.shutdown(a.flush_timeout);
    let result = tokio::select! {
        r = flush => r,
        _ = sigint.recv() => { warn!("second signal: stopping without finishing the flush"); return Ok(ExitCode::from(1)); }
        _ = sigterm.recv() => { warn!("second signal: stopping without finishing the flush"); return Ok(ExitCode::from(1)); }
    };
    result.with_context(|| format!("replication of {} failed", a.db_path.display()))?;
    if failed {
        anyhow::bail!(
            "replication of {} stopped unexpectedly",
            a.db_path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
