//! `replica verify`: proves a replica restores. The restore runs into a private
//! temporary directory with every check the restore has (each file's CRC-64 and
//! structure, the chain's continuity) plus SQLite's full `integrity_check`, and is
//! then deleted. Nothing is written anywhere else.
//!
//! With `--against DB`, the restored content is also compared, table by table, with
//! the live database at the same TXID. While a `replicate` process writes the
//! replica, only that process can name a point both sides hold: it takes SQLite's
//! write lock for as long as it takes to spool the last commits, opens a read
//! transaction there, and the comparison reads the live database inside it
//! (`Monitor::consistent_read`), so the application keeps writing meanwhile. The
//! command asks the process over its endpoint (`--addr`); without one, the database
//! must be one nobody replicates right now (checked through the replica's lease).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use replica_core::content::{self, ContentDigest};
use replica_core::engine::Monitor;
use replica_core::error::Chain;
use replica_core::lease;
use replica_core::replica::Replica;
use replica_core::restore::{self, IntegrityCheck, RestoreOptions, RestoreOutcome, Target};
use serde_json::{Value, json};

use crate::backends;
use crate::cli::VerifyArgs;
use crate::endpoint::Board;
use crate::exit::usage;

/// How long an in-process verify waits for the store to hold the point it fixed.
const STORED_WAIT: Duration = Duration::from_secs(60);

/// How long `--addr` waits for the process's answer: a restore of a large database.
const ASK_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

pub async fn run(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let target = match (a.txid, a.timestamp) {
        (Some(t), _) => Target::Txid(t),
        (None, Some(ts)) => Target::Timestamp(ts),
        (None, None) => Target::Latest,
    };
    let base = a.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let (ok, report) = match (&a.against, a.addr) {
        (Some(db), Some(addr)) => {
            let path = crate::ask::with_query("/verify", [("db", db.display().to_string())]);
            let (status, v) =
                crate::ask::ask(addr, hyper::Method::POST, &path, ASK_TIMEOUT).await?;
            if !status.is_success() {
                anyhow::bail!(
                    "the replicate process at {addr} could not verify {}: {}",
                    db.display(),
                    v["error"].as_str().unwrap_or("no reason given")
                );
            }
            (v["status"] == "ok", v)
        }
        (Some(db), None) => against_idle(&a.replica_url, &base, db).await?,
        (None, _) => verify(&a.replica_url, &base, target, None).await?,
    };
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

/// The live side of a comparison: a database and a read transaction on it.
pub(crate) struct Against {
    pub db: PathBuf,
    pub conn: rusqlite::Connection,
}

/// Restores `url` at `target` into a temporary directory under `base` with the full
/// check, compares it with `against` if given, and deletes it: whether it passed, and
/// the report. An error is one to do with this run (the URL, the work directory),
/// not with the replica.
pub(crate) async fn verify(
    url: &str,
    base: &Path,
    target: Target,
    against: Option<Against>,
) -> anyhow::Result<(bool, Value)> {
    let replica = Replica::new(backends::open(url).await?);
    let dir = tempfile::Builder::new()
        .prefix(".replica-verify-")
        .tempdir_in(base)
        .with_context(|| format!("creating a work directory in {}", base.display()))?;
    let output = dir.path().join("verify.db");
    let opts = RestoreOptions {
        output: output.clone(),
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
    let failure = |error: String| {
        json!({
            "status": "failure",
            "url": replica.url(),
            "error": error,
            "elapsed_seconds": started.elapsed().as_secs_f64(),
        })
    };
    let mut report = match result {
        Ok(outcome @ (RestoreOutcome::Restored { .. } | RestoreOutcome::RestoredV3 { .. })) => {
            let mut v = super::restore::outcome_json(&outcome, started);
            v["status"] = Value::from("ok");
            v["url"] = Value::from(replica.url());
            v["integrity_check"] = Value::from("ok");
            v
        }
        Ok(RestoreOutcome::NoReplica) => {
            return Ok((false, failure("the replica is empty".into())));
        }
        Ok(other) => return Ok((false, failure(format!("{other:?}")))),
        Err(e) => return Ok((false, failure(Chain(&e).to_string()))),
    };
    let Some(against) = against else {
        return Ok((true, report));
    };
    let live = against.db.display().to_string();
    let differences = tokio::task::spawn_blocking(move || compare(&against.conn, &output, &live))
        .await
        .context("the comparison task failed")??;
    report["against"] = Value::from(against.db.display().to_string());
    report["differences"] = json!(differences);
    let ok = differences.is_empty();
    if !ok {
        report["status"] = Value::from("failure");
        report["error"] = Value::from(format!(
            "the replica differs from {}: {}",
            against.db.display(),
            differences.join("; ")
        ));
    }
    report["elapsed_seconds"] = Value::from(started.elapsed().as_secs_f64());
    Ok((ok, report))
}

/// What differs between the live read transaction and the restored file.
fn compare(
    live: &rusqlite::Connection,
    restored: &Path,
    name: &str,
) -> anyhow::Result<Vec<String>> {
    let ours = ContentDigest::read(live).with_context(|| format!("reading {name}"))?;
    let conn = content::open_read(restored, Duration::from_secs(5))
        .with_context(|| format!("opening the restored copy {}", restored.display()))?;
    let theirs = ContentDigest::read(&conn).context("reading the restored copy")?;
    Ok(ours.differences(&theirs, name, "the replica"))
}

/// `--against DB` without a process to ask: the replica must have no live writer,
/// and then the database's current state must equal the replica's latest.
async fn against_idle(url: &str, base: &Path, db: &Path) -> anyhow::Result<(bool, Value)> {
    let client = backends::open(url).await?;
    let holder = lease::current_holder(client.as_ref())
        .await
        .with_context(|| format!("reading the lease of {url}"))?;
    if let Some(holder) = holder {
        return Err(usage(format!(
            "{url} is being replicated right now by {holder}, so it trails {} by up to a sync interval; \
             give --addr with that process's metrics address (replicate --metrics-addr) and it fixes a point both hold",
            db.display()
        )));
    }
    anyhow::ensure!(
        db.is_file(),
        "{} does not exist or is not a file",
        db.display()
    );
    let conn = content::open_read(db, Duration::from_secs(5))
        .with_context(|| format!("opening {} for reading", db.display()))?;
    let against = Against {
        db: db.to_path_buf(),
        conn,
    };
    verify(url, base, Target::Latest, Some(against)).await
}

/// Verifies `monitor`'s database against its replica at a point the replicator fixes
/// (see the module's doc), restoring beside the database (same file system, which
/// has room for it).
pub(crate) async fn against_running(monitor: &Monitor, url: &str) -> anyhow::Result<(bool, Value)> {
    let db = monitor.db().to_path_buf();
    let read = monitor.consistent_read().await?;
    monitor.wait_stored(read.txid, STORED_WAIT).await?;
    let base = match db.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let against = Against {
        db,
        conn: read.conn,
    };
    verify(url, &base, Target::Txid(read.txid), Some(against)).await
}

/// Verifies every database's replica against the database every `every`, from the
/// replicating process (`verify_interval`). The outcome goes to the log and to the
/// metrics.
pub(crate) fn periodic(every: Duration, board: Arc<Board>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            for (monitor, url) in board.replicators(&[]) {
                let db = monitor.db().to_path_buf();
                match against_running(&monitor, &url).await {
                    Ok((true, r)) => {
                        tracing::info!(db = %db.display(), txid = r["txid"].as_str().unwrap_or("-"), "verify: the replica restores, passes integrity_check and equals the database");
                        board.verified(&db, true);
                    }
                    Ok((false, r)) => {
                        tracing::warn!(db = %db.display(), error = r["error"].as_str().unwrap_or("-"), "verify FAILED");
                        board.verified(&db, false);
                    }
                    Err(e) => {
                        tracing::warn!(db = %db.display(), error = %format!("{e:#}"), "verify could not run");
                        board.verified(&db, false);
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
        let equal = match r["against"].as_str() {
            Some(db) => format!("; equals {db} table by table"),
            None => String::new(),
        };
        format!(
            "OK: {} restores to {point} ({} files, {} bytes read); integrity_check ok{equal}; {:.1} s\n",
            s("url"),
            r["files"],
            r["bytes_downloaded"],
            r["elapsed_seconds"].as_f64().unwrap_or(0.0)
        )
    } else if r["differences"].is_array() {
        let mut out = format!(
            "FAILURE: {} at TXID {} differs from {}:\n",
            s("url"),
            s("txid"),
            s("against")
        );
        for d in r["differences"].as_array().into_iter().flatten() {
            out.push_str(&format!("  {}\n", d.as_str().unwrap_or("?")));
        }
        out
    } else {
        format!("FAILURE: {} does not restore: {}\n", s("url"), s("error"))
    }
}
