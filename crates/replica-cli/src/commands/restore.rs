use std::process::ExitCode;

use anyhow::Context;
use replica_core::replica::Replica;
use replica_core::restore::{self, IntegrityCheck, RestoreOptions, RestoreOutcome, Target};

use crate::backends;
use crate::cli::{IntegrityArg, RestoreArgs};

pub async fn run(a: RestoreArgs) -> anyhow::Result<ExitCode> {
    let client = backends::open(&a.replica_url).await?;
    let replica = Replica::new(client);
    let opts = RestoreOptions {
        output: a.output.clone(),
        target: match (a.txid, a.timestamp) {
            (Some(t), _) => Target::Txid(t),
            (None, Some(ts)) => Target::Timestamp(ts),
            (None, None) => Target::Latest,
        },
        parallelism: usize::from(a.parallelism),
        integrity: match a.integrity_check {
            IntegrityArg::None => IntegrityCheck::None,
            IntegrityArg::Quick => IntegrityCheck::Quick,
            IntegrityArg::Full => IntegrityCheck::Full,
        },
        if_db_not_exists: a.if_db_not_exists,
        if_replica_exists: a.if_replica_exists,
    };
    let started = std::time::Instant::now();
    let outcome = restore::restore(&replica, &opts)
        .await
        .with_context(|| format!("restore of {} failed", a.output.display()))?;
    if let RestoreOutcome::Restored {
        txid,
        files,
        bytes_downloaded,
    } = outcome
    {
        tracing::info!(
            output = %a.output.display(),
            txid = format!("{txid:016x}"),
            files,
            bytes_downloaded,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "restore complete"
        );
    }
    Ok(ExitCode::SUCCESS)
}
