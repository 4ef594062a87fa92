use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use replica::Config;
use replica_core::engine::status;
use replica_core::replica::Replica;
use serde_json::Value;

use crate::backends;
use crate::cli::StatusArgs;
use crate::exit::usage;

/// How long a running process has to answer before the spool and replica are read.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn run(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let (databases, config_addr) = match (&a.db_path, &a.replica_url, &a.config) {
        (Some(db), Some(url), None) => (vec![(db.clone(), url.clone())], None),
        (None, None, Some(file)) => {
            let c = Config::load(file)?;
            let dbs = c.databases.iter().map(|d| (d.path.clone(), d.url.clone()));
            (dbs.collect(), c.metrics_addr)
        }
        (Some(_), Some(_), Some(_)) => {
            return Err(usage(
                "status takes DB_PATH and REPLICA_URL, or --config FILE, not both",
            ));
        }
        (None, None, None) if a.addr.is_some() => (Vec::new(), None),
        _ => {
            return Err(usage(
                "status needs DB_PATH and REPLICA_URL, --config FILE (or REPLICA_CONFIG), or --addr",
            ));
        }
    };
    let report = match a.addr.or(config_addr) {
        Some(addr) => match ask(addr).await {
            Ok(v) => v,
            Err(e) if a.addr.is_some() && databases.is_empty() => return Err(e),
            Err(e) => {
                tracing::info!(addr = %addr, reason = %format!("{e:#}"), "no replicate process answers; reading the spool and the replica");
                offline(&databases).await?
            }
        },
        None => offline(&databases).await?,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text(&report));
    }
    let stopped = report["databases"]
        .as_array()
        .is_some_and(|d| d.iter().any(|s| s["state"] == "stopped"));
    Ok(if stopped {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The running process's `/status`.
async fn ask(addr: SocketAddr) -> anyhow::Result<Value> {
    let (status, v) = crate::ask::ask(addr, hyper::Method::GET, "/status", ASK_TIMEOUT).await?;
    anyhow::ensure!(
        status.is_success(),
        "HTTP {status} from http://{addr}/status"
    );
    Ok(v)
}

async fn offline(databases: &[(PathBuf, String)]) -> anyhow::Result<Value> {
    let mut out = Vec::with_capacity(databases.len());
    for (db, url) in databases {
        let replica = Replica::new(backends::open(url).await?);
        let s = status::offline(db, &replica)
            .await
            .with_context(|| format!("reading the replica of {} at {url}", db.display()))?;
        out.push(serde_json::to_value(s)?);
    }
    Ok(
        serde_json::json!({ "version": env!("CARGO_PKG_VERSION"), "ready": false, "databases": out }),
    )
}

fn text(report: &Value) -> String {
    let mut out = String::new();
    let empty = Vec::new();
    for s in report["databases"].as_array().unwrap_or(&empty) {
        let str_of = |k: &str| s[k].as_str().unwrap_or("-").to_owned();
        let num = |k: &str| s[k].as_f64().unwrap_or(0.0);
        out.push_str(&format!(
            "{} ({})\n",
            str_of("db"),
            str_of("state").replace('_', " ")
        ));
        let mut row = |k: &str, v: String| out.push_str(&format!("  {k:<12} {v}\n"));
        row("replica", str_of("url"));
        row("local TXID", str_of("local_txid"));
        row("remote TXID", str_of("remote_txid"));
        row("lag", format!("{:.1} s", num("lag_seconds")));
        row(
            "spool",
            format!(
                "{} files, {}",
                num("spool_files"),
                bytes(num("spool_bytes"))
            ),
        );
        row("WAL", bytes(num("wal_bytes")));
        row("last upload", str_of("last_upload"));
        let age = s["snapshot_age_seconds"]
            .as_f64()
            .map(|a| {
                format!(
                    " ({} ago)",
                    humantime::format_duration(Duration::from_secs(a as u64))
                )
            })
            .unwrap_or_default();
        row("snapshot", format!("{}{age}", str_of("last_snapshot")));
        row(
            "restorable",
            format!(
                "{} … {}",
                str_of("restorable_from"),
                str_of("restorable_to")
            ),
        );
    }
    if out.is_empty() {
        out.push_str("no databases\n");
    }
    out
}

fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
