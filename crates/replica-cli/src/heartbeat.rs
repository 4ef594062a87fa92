//! A dead man's switch: a GET to the operator's URL every interval while every
//! database replicates (uploads succeed) with less than [`MAX_LAG`] of lag. A monitor
//! such as healthchecks.io raises the alarm when the pings stop, which also covers a
//! process that is gone and cannot report anything itself.

use std::sync::Arc;
use std::time::Duration;

use replica_core::engine::State;
use tracing::{debug, info, warn};

use crate::endpoint::Board;

/// Lag past which a database is not "in sync" for the heartbeat.
pub const MAX_LAG: Duration = Duration::from_secs(60);

/// Pings `url` every `every` from now on, for the life of the process.
pub fn spawn(url: String, every: Duration, board: Arc<Board>) -> anyhow::Result<()> {
    let parsed = url::Url::parse(&url)
        .map_err(|e| crate::exit::usage(format!("heartbeat URL is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(crate::exit::usage(format!(
            "the heartbeat URL must be http:// or https://, not {}://",
            parsed.scheme()
        )));
    }
    // Heartbeat URLs carry a token in their path: only the host is ever shown.
    let shown = format!(
        "{}://{}/…",
        parsed.scheme(),
        parsed.host_str().unwrap_or("")
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| anyhow::anyhow!("building the heartbeat's HTTP client: {e}"))?;
    info!(url = %shown, every = %humantime::format_duration(every), "heartbeat on");
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            tokio::time::sleep(every).await;
            if let Err(why) = in_sync(&board) {
                debug!(reason = %why, "heartbeat skipped");
                continue;
            }
            match client.get(parsed.clone()).send().await {
                Ok(r) if r.status().is_success() => {
                    if failing {
                        info!(url = %shown, "heartbeat delivered again");
                        failing = false;
                    }
                    debug!(url = %shown, "heartbeat sent");
                }
                Ok(r) => {
                    warn!(url = %shown, status = r.status().as_u16(), "heartbeat refused");
                    failing = true;
                }
                Err(e) => {
                    // reqwest's message may quote the URL: keep its kind only.
                    let kind = if e.is_timeout() {
                        "timed out"
                    } else if e.is_connect() {
                        "could not connect"
                    } else {
                        "request failed"
                    };
                    warn!(url = %shown, error = kind, "heartbeat not delivered");
                    failing = true;
                }
            }
        }
    });
    Ok(())
}

fn in_sync(board: &Board) -> Result<(), String> {
    let statuses = board.statuses();
    if !board.started() || statuses.is_empty() {
        return Err("not replicating yet".into());
    }
    for s in &statuses {
        if s.state != State::Replicating {
            return Err(format!("{} is {}", s.db.display(), s.state.as_str()));
        }
        if s.lag_seconds > MAX_LAG.as_secs_f64() {
            return Err(format!("{} lags {:.0} s", s.db.display(), s.lag_seconds));
        }
    }
    Ok(())
}
