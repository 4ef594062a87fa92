//! `restore --dry-run`: the plan a restore would follow, from the same listing and
//! the same choice of history, with nothing written anywhere.

use std::time::SystemTime;

use serde::Serialize;

use super::{
    RestoreError, RestoreOptions, RestoreOutcome, Source, check_output, choose_source, no_replica,
};
use crate::replica::Replica;

/// What a restore with the same options would do now.
#[derive(Debug, Clone)]
pub enum DryRun {
    /// Read these files.
    Plan(PlanSummary),
    /// Nothing: the output exists (`if_db_not_exists`) or the replica is empty
    /// (`if_replica_exists`).
    Skip(RestoreOutcome),
}

/// What a restore would read and where it would stop.
#[derive(Debug, Clone, Serialize)]
pub struct PlanSummary {
    pub url: String,
    /// `ltx` (Litestream 0.5 history) or `litestream-0.3` (a 0.3 generation).
    pub format: &'static str,
    /// The files in the order they are applied (LTX history only).
    pub files: Vec<PlannedFile>,
    /// Objects to read and their total size (the 0.3 sizes are not listed: 0).
    pub objects: usize,
    pub bytes: u64,
    /// The restore point: the last TXID applied, and when its file was written.
    #[serde(serialize_with = "crate::engine::status::hex_opt")]
    pub txid: Option<u64>,
    #[serde(serialize_with = "crate::engine::status::rfc3339")]
    pub time: Option<SystemTime>,
    /// A 0.3 restore: the generation and the last WAL index.
    pub generation: Option<String>,
    pub index: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedFile {
    pub level: u8,
    #[serde(serialize_with = "crate::engine::status::hex")]
    pub min_txid: u64,
    #[serde(serialize_with = "crate::engine::status::hex")]
    pub max_txid: u64,
    pub size: u64,
    #[serde(serialize_with = "crate::engine::status::rfc3339")]
    pub created: Option<SystemTime>,
    pub key: String,
}

/// What a restore with `opts` would do now: its plan, or why it would do nothing. It
/// fails where the restore would fail before writing (an existing output, a stale
/// `-wal` beside it, an empty replica, no history for the target).
pub async fn dry_run(replica: &Replica, opts: &RestoreOptions) -> Result<DryRun, RestoreError> {
    if let Some(skip) = check_output(opts)? {
        return Ok(DryRun::Skip(skip));
    }
    let summary = match choose_source(replica, opts).await? {
        None => return Ok(DryRun::Skip(no_replica(replica, opts)?)),
        Some(Source::Ltx(chain)) => {
            let last = chain.last();
            PlanSummary {
                url: replica.url().to_owned(),
                format: "ltx",
                objects: chain.len(),
                bytes: chain.iter().map(|f| f.size).sum(),
                txid: last.map(|f| f.id.range.max),
                time: last.and_then(|f| f.time()),
                generation: None,
                index: None,
                files: chain
                    .iter()
                    .map(|f| PlannedFile {
                        level: f.id.level,
                        min_txid: f.id.range.min,
                        max_txid: f.id.range.max,
                        size: f.size,
                        created: f.time(),
                        key: f.key.to_string(),
                    })
                    .collect(),
            }
        }
        Some(Source::V3(plan)) => PlanSummary {
            url: replica.url().to_owned(),
            format: "litestream-0.3",
            files: Vec::new(),
            objects: plan.objects(),
            bytes: 0,
            txid: None,
            time: None,
            generation: Some(plan.generation.to_string()),
            index: Some(format!("{:08x}", plan.last_index())),
        },
    };
    Ok(DryRun::Plan(summary))
}
