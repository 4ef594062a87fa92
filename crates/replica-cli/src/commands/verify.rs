//! `replica verify`: proves a replica restores. The restore runs into a private
//! temporary directory with every check the restore has (each file's CRC-64 and
//! structure, the chain's continuity) plus SQLite's full `integrity_check`, and is
//! then deleted. Nothing is written anywhere else.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use replica_core::error::Chain;
use replica_core::replica::Replica;
use replica_core::restore::{self, IntegrityCheck, RestoreOptions, RestoreOutcome, Target};
use serde_json::{Value, json};

use crate::backends;
use crate::cli::VerifyArgs;

pub async fn run(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let target = match (a.txid, a.timestamp) {
        (Some(t), _) => Target::Txid(t),
        (None, Some(ts)) => Target::Timestamp(ts),
        (None, None) => Target::Latest,
    };
    let base = a.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let (ok, report) = verify(&a.replica_url, &base, target).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text(&report));
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Restores `url` at `target` into a temporary directory under `base` with the full
/// check, and deletes it: whether it restored, and the report. An error is one to
/// do with this run (the URL, the work directory), not with the replica.
pub(crate) async fn verify(
    url: &str,
    base: &std::path::Path,
    target: Target,
) -> anyhow::Result<(bool, Value)> {
    let replica = Replica::new(backends::open(url).await?);
    let dir = tempfile::Builder::new()
        .prefix(".replica-verify-")
        .tempdir_in(base)
        .with_context(|| format!("creating a work directory in {}", base.display()))?;
    let opts = RestoreOptions {
        output: dir.path().join("verify.db"),
        target,
        parallelism: 8,
        integrity: IntegrityCheck::Full,
        if_db_not_exists: false,
        if_replica_exists: false,
        seed_spool: false,
        mode: None,
    };
    let started = Instant::now();
    let result = restore::restore(&replica, &opts).await;
    let (ok, report) = match result {
        Ok(outcome @ (RestoreOutcome::Restored { .. } | RestoreOutcome::RestoredV3 { .. })) => {
            let mut v = super::restore::outcome_json(&outcome, started);
            v["status"] = Value::from("ok");
            v["url"] = Value::from(replica.url());
            v["integrity_check"] = Value::from("ok");
            (true, v)
        }
        Ok(other) => (
            false,
            json!({ "status": "failure", "url": replica.url(), "error": format!("{other:?}") }),
        ),
        Err(e) => (
            false,
            json!({
                "status": "failure",
                "url": replica.url(),
                "error": Chain(&e).to_string(),
                "elapsed_seconds": started.elapsed().as_secs_f64(),
            }),
        ),
    };
    Ok((ok, report))
}

/// Verifies every database's replica every `every`, from the replicating process
/// (`verify_interval`): each run restores the latest state beside the database
/// (same file system as the database, which has room for it) and deletes it. The
/// outcome goes to the log and to the metrics.
pub(crate) fn periodic(
    every: std::time::Duration,
    databases: Vec<(std::path::PathBuf, String)>,
    board: std::sync::Arc<crate::endpoint::Board>,
) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            for (db, url) in &databases {
                let base = match db.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => std::path::PathBuf::from("."),
                };
                match verify(url, &base, Target::Latest).await {
                    Ok((true, r)) => {
                        tracing::info!(db = %db.display(), txid = r["txid"].as_str().unwrap_or("-"), "verify: the replica restores and passes integrity_check");
                        board.verified(db, true);
                    }
                    Ok((false, r)) => {
                        tracing::warn!(db = %db.display(), error = r["error"].as_str().unwrap_or("-"), "verify FAILED: the replica does not restore");
                        board.verified(db, false);
                    }
                    Err(e) => {
                        tracing::warn!(db = %db.display(), error = %format!("{e:#}"), "verify could not run");
                        board.verified(db, false);
                    }
                }
            }
        }
    });
}

fn text(r: &Value) -> String {
    let s = |k: &str| {
        r[k].as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| r[k].to_string())
    };
    if r["status"] == "ok" {
        let point = match r["txid"].as_str() {
            Some(t) => format!("TXID {t}"),
            None => format!("generation {} index {}", s("generation"), s("index")),
        };
        format!(
            "OK: {} restores to {point} ({} files, {} bytes read); integrity_check ok; {:.1} s\n",
            s("url"),
            r["files"],
            r["bytes_downloaded"],
            r["elapsed_seconds"].as_f64().unwrap_or(0.0)
        )
    } else {
        format!("FAILURE: {} does not restore: {}\n", s("url"), s("error"))
    }
}
