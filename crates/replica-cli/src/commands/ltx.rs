use std::process::ExitCode;

use replica_core::replica::Replica;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::backends;
use crate::cli::LtxArgs;

pub async fn run(a: LtxArgs) -> anyhow::Result<ExitCode> {
    let replica = Replica::new(backends::open(&a.replica_url).await?);
    let mut files = replica.list_files(a.level.0).await?;
    replica.fill_ltx_times(&mut files, None).await?;
    let created = |f: &replica_core::replica::RemoteFile| {
        f.time()
            .and_then(|t| OffsetDateTime::from(t).format(&Rfc3339).ok())
            .unwrap_or_default()
    };
    if a.json {
        let rows: Vec<_> = files
            .iter()
            .map(|f| {
                serde_json::json!({
                    "level": f.id.level,
                    "min_txid": format!("{:016x}", f.id.range.min),
                    "max_txid": format!("{:016x}", f.id.range.max),
                    "size": f.size,
                    "created": created(f),
                    "key": f.key.as_str(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<6}{:<18}{:<18}{:>12}  CREATED",
            "LEVEL", "MIN_TXID", "MAX_TXID", "SIZE"
        );
        for f in &files {
            println!(
                "{:<6}{:016x}  {:016x}  {:>12}  {}",
                f.id.level,
                f.id.range.min,
                f.id.range.max,
                f.size,
                created(f)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
