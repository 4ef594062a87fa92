//! `replica sync`: waits until everything committed so far is in the store, by
//! asking the running `replicate` process (`POST /sync` on its metrics address). An
//! application calls it before acknowledging something that must survive the loss
//! of the machine; it costs about one sync interval, and no extra upload unless
//! `--now`.

use std::process::ExitCode;
use std::time::Duration;

use replica::Config;
use serde_json::Value;

use crate::cli::SyncArgs;
use crate::exit::usage;

pub async fn run(a: SyncArgs) -> anyhow::Result<ExitCode> {
    let config_addr = match &a.config {
        Some(file) => Config::load(file)?.metrics_addr,
        None => None,
    };
    let Some(addr) = a.addr.or(config_addr) else {
        return Err(usage(
            "sync asks the running replicate process: give --addr (its --metrics-addr), or --config with replication.metrics_addr set",
        ));
    };
    let mut query: Vec<(&str, String)> = a
        .dbs
        .iter()
        .map(|d| ("db", d.display().to_string()))
        .collect();
    query.push(("timeout_ms", a.timeout.as_millis().to_string()));
    if a.now {
        query.push(("now", "1".into()));
    }
    let path = crate::ask::with_query("/sync", query);
    // The process answers by the timeout; the margin is for the connection.
    let (status, report) = crate::ask::ask(
        addr,
        hyper::Method::POST,
        &path,
        a.timeout + Duration::from_secs(10),
    )
    .await?;
    if !status.is_success() {
        anyhow::bail!(
            "the replicate process at {addr} refused the sync: {}",
            report["error"].as_str().unwrap_or("no reason given")
        );
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text(&report));
    }
    let all_stored = report["databases"]
        .as_array()
        .is_some_and(|d| d.iter().all(|s| s["status"] == "stored"));
    Ok(if all_stored {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn text(report: &Value) -> String {
    let mut out = String::new();
    for d in report["databases"].as_array().into_iter().flatten() {
        let s = |k: &str| d[k].as_str().unwrap_or("-").to_owned();
        if d["status"] == "stored" {
            out.push_str(&format!("stored: {} up to TXID {}\n", s("db"), s("txid")));
        } else {
            out.push_str(&format!("NOT STORED: {}: {}\n", s("db"), s("error")));
        }
    }
    out
}
