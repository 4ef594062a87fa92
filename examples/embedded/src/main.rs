//! A sharded service that replicates its own databases in-process.
//!
//! `replica-example-embedded CONFIG KEYS` restores missing shards, starts replication,
//! writes KEYS rows spread over the shards by FNV-1a of the key (every tenth also to the
//! dead-letter database, the last configured database), and shuts down with a final
//! flush, exactly as the sidecar would.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use replica::Deployment;
use rusqlite::Connection;

fn fnv1a(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn open(path: &std::path::Path) -> anyhow::Result<Connection> {
    let c = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    // Above the replicator's short write barrier.
    c.busy_timeout(Duration::from_secs(5))?;
    c.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS kv(k TEXT PRIMARY KEY, v TEXT);",
    )?;
    Ok(c)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let (Some(config), Some(keys)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: replica-example-embedded CONFIG KEYS");
    };
    let keys: usize = keys.parse().context("KEYS must be a number")?;

    let deployment = Deployment::from_config(&PathBuf::from(config))?;
    deployment.check_shards().await?;
    deployment.restore_missing().await?;
    let running = deployment.start().await?;

    let shards = deployment.config.shard_count.unwrap_or(1) as usize;
    let paths: Vec<PathBuf> = deployment
        .config
        .databases
        .iter()
        .map(|d| d.path.clone())
        .collect();
    let written = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        let conns = paths
            .iter()
            .map(|p| open(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let dlq = conns.last().context("no databases configured")?;
        for i in 0..keys {
            let k = format!("key-{i}");
            let shard = &conns[(fnv1a(&k) % shards as u64) as usize];
            shard.execute("INSERT INTO kv VALUES (?1, ?2)", (&k, "value"))?;
            if i % 10 == 0 {
                dlq.execute("INSERT INTO kv VALUES (?1, 'failed')", [&k])?;
            }
        }
        Ok(keys)
    })
    .await??;

    running.shutdown(Duration::from_secs(30)).await?;
    println!("wrote {written} keys");
    Ok(())
}
