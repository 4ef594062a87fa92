//! `replica generations URL`: what a Litestream 0.3 replica holds.

use std::process::ExitCode;
use std::time::SystemTime;

use replica_core::restore::v3::{self, Generation};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::backends;
use crate::cli::GenerationsArgs;

/// A time as the JSON outputs and log lines print it.
pub(super) fn rfc3339(t: SystemTime) -> String {
    OffsetDateTime::from(t).format(&Rfc3339).unwrap_or_default()
}

/// The WAL indexes of a generation: (index, segments, bytes, first time, last time).
fn wal_indexes(g: &Generation) -> Vec<(u32, usize, u64, SystemTime, SystemTime)> {
    let mut out: Vec<(u32, usize, u64, SystemTime, SystemTime)> = Vec::new();
    for s in &g.segments {
        match out.last_mut() {
            Some(w) if w.0 == s.index => {
                w.1 += 1;
                w.2 += s.size;
                w.3 = w.3.min(s.modified);
                w.4 = w.4.max(s.modified);
            }
            _ => out.push((s.index, 1, s.size, s.modified, s.modified)),
        }
    }
    out
}

pub async fn run(a: GenerationsArgs) -> anyhow::Result<ExitCode> {
    let client = backends::open(&a.replica_url).await?;
    let listing = v3::list(client.as_ref()).await?;
    if a.json {
        let rows: Vec<_> = listing
            .iter()
            .map(|(id, g)| {
                let (created, updated) = g.time_bounds().map_or((None, None), |(c, u)| {
                    (Some(rfc3339(c)), Some(rfc3339(u)))
                });
                serde_json::json!({
                    "generation": id.to_string(),
                    "created": created,
                    "updated": updated,
                    "snapshots": g.snapshots.iter().map(|s| serde_json::json!({
                        "index": format!("{:08x}", s.index),
                        "size": s.size,
                        "created": rfc3339(s.modified),
                        "key": s.key,
                    })).collect::<Vec<_>>(),
                    "wal": wal_indexes(g).into_iter().map(|(i, n, bytes, first, last)| serde_json::json!({
                        "index": format!("{i:08x}"),
                        "segments": n,
                        "size": bytes,
                        "first": rfc3339(first),
                        "last": rfc3339(last),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if listing.is_empty() {
        println!(
            "no Litestream 0.3 generations at {}",
            client.info().redacted_url
        );
        return Ok(ExitCode::SUCCESS);
    }
    for (id, g) in &listing {
        let (created, updated) = g
            .time_bounds()
            .map_or((String::new(), String::new()), |(c, u)| {
                (rfc3339(c), rfc3339(u))
            });
        println!("generation {id}  {created} .. {updated}");
        for s in &g.snapshots {
            println!(
                "  snapshot {:08x}  {:>12} bytes  {}",
                s.index,
                s.size,
                rfc3339(s.modified)
            );
        }
        for (i, n, bytes, first, last) in wal_indexes(g) {
            println!(
                "  wal      {i:08x}  {bytes:>12} bytes  {} .. {}  ({n} segments)",
                rfc3339(first),
                rfc3339(last)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
