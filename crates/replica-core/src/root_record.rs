//! What the replica records about its database, in one small JSON object at the
//! replica root (`replica-db.json`). Litestream reads only its level directories, so
//! the object is invisible to it, as it is to our own listing (not an LTX name).
//!
//! It holds the database's file mode, which a restore gives the restored file, and
//! the database's identity, so that a second database pointed at the same URL is
//! refused instead of replacing the first one's latest state. Fields this version
//! does not know are kept when it rewrites the record, so an older binary does not
//! erase what a newer one recorded.
//!
//! The local half of the identity is a file in the database's spool directory
//! ([`LOCAL_ID_FILE`]), written when replication first records the identity and by
//! every restore of the latest state.

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::client::{Payload, PutMode, PutOptions, ReplicaClient};
use crate::error::{Chain, Op, StoreError};
use crate::file_mode::FileMode;
use crate::key::Key;

/// The record's key, relative to the replica root.
pub const KEY: &str = "replica-db.json";

/// Records above this size are refused: the record is a handful of fields.
const MAX_LEN: usize = 64 << 10;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RootRecord {
    /// The permission bits of the replicated database (`"0640"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<FileMode>,
    /// Which database this replica holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<Identity>,
    /// Fields of newer versions, written back as they were read.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// A database's identity: a random id, made when its replica is first written, and
/// the file name it had then (for messages, and to adopt a database that predates
/// identities).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub id: String,
    pub name: String,
}

impl Identity {
    pub fn new(name: String) -> Self {
        Self {
            id: format!("{:032x}", rand::random::<u128>()),
            name,
        }
    }
}

/// The file in the spool directory that holds the local database's identity id.
pub const LOCAL_ID_FILE: &str = "database-id";

#[derive(Debug, thiserror::Error)]
pub enum RootRecordError {
    #[error(transparent)]
    Store(#[from] StoreError),

    #[error(
        "{url}: the record {KEY} is not valid ({detail}); it is rewritten when replication starts, or it can be deleted"
    )]
    Malformed { url: String, detail: String },
}

/// Reads the record with one GET; `None` if the replica has none.
pub async fn read(client: &dyn ReplicaClient) -> Result<Option<RootRecord>, RootRecordError> {
    let mut body = match client.get(&Key::from_static(KEY), None).await {
        Ok(b) => b,
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut bytes = Vec::new();
    (&mut body)
        .take(MAX_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| StoreError::body_broken(Op::Get, KEY, e))?;
    let malformed = |detail: String| RootRecordError::Malformed {
        url: client.info().redacted_url.clone(),
        detail,
    };
    if bytes.len() > MAX_LEN {
        return Err(malformed(format!("larger than {MAX_LEN} bytes")));
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| malformed(e.to_string()))
}

/// Replaces the record.
pub async fn write(client: &dyn ReplicaClient, record: &RootRecord) -> Result<(), StoreError> {
    let body = serde_json::to_vec(record).map_err(|e| StoreError::Other {
        op: Op::Put,
        key: KEY.into(),
        source: Box::new(e),
    })?;
    let opts = PutOptions {
        mode: PutMode::Overwrite,
        timestamp: None,
    };
    client
        .put(&Key::from_static(KEY), Payload::Bytes(body.into()), &opts)
        .await
}

/// The replica holds another database than the one being replicated.
#[derive(Debug, thiserror::Error)]
#[error(
    "{url} holds the replica of another database ({theirs_name}, id {theirs_id}), not of {db}; give {db} its own replica URL, or, to make {db} that replica's latest state, pass --take-over-replica (`take_over_replica: true` in the config)"
)]
pub struct ForeignReplica {
    pub url: String,
    pub db: String,
    pub theirs_name: String,
    pub theirs_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EnsureError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Foreign(#[from] ForeignReplica),
}

/// What the replicated database is, as replication starts.
#[derive(Debug, Clone)]
pub struct LocalDatabase<'a> {
    /// Its file name (`shard_0.db`).
    pub name: &'a str,
    /// The id in its spool directory, if it has one.
    pub id: Option<&'a str>,
    /// The replica has no LTX files yet.
    pub replica_empty: bool,
    /// Replace another database's replica rather than refuse it.
    pub take_over: bool,
}

impl LocalDatabase<'_> {
    /// The identity this database gives a replica: its own id if it has one.
    fn identity(&self) -> Identity {
        match self.id {
            Some(id) => Identity {
                id: id.to_owned(),
                name: self.name.to_owned(),
            },
            None => Identity::new(self.name.to_owned()),
        }
    }
}

/// Makes the record say `mode` and name the local database, with one GET, and a PUT
/// only when something changed. A replica that records another database is refused
/// (unless `take_over`); one that records none (new, or written before identities,
/// or by Litestream) is given the local database's. A database without an id of its
/// own adopts the replica's when it has the recorded name. Returns the identity,
/// whose id the caller keeps in the spool. A malformed record is replaced.
pub async fn ensure(
    client: &dyn ReplicaClient,
    mode: FileMode,
    local: &LocalDatabase<'_>,
) -> Result<Identity, EnsureError> {
    let mut record = read_or_default(client).await?;
    let before = record.clone();
    let identity = match (&record.database, local.id) {
        (Some(theirs), Some(ours)) if theirs.id == ours => theirs.clone(),
        (Some(theirs), None) if theirs.name == local.name || local.replica_empty => theirs.clone(),
        (Some(theirs), ours) if !local.take_over && !local.replica_empty => {
            return Err(ForeignReplica {
                url: client.info().redacted_url.clone(),
                db: match ours {
                    Some(id) => format!("{} (id {id})", local.name),
                    None => local.name.to_owned(),
                },
                theirs_name: theirs.name.clone(),
                theirs_id: theirs.id.clone(),
            }
            .into());
        }
        (Some(theirs), _) if !local.replica_empty => {
            tracing::warn!(url = %client.info().redacted_url, replaced = %theirs.name, db = local.name, "taking over a replica that held another database, as asked");
            local.identity()
        }
        _ => local.identity(),
    };
    record.database = Some(identity.clone());
    record.mode = Some(mode);
    if record != before {
        write(client, &record).await?;
    }
    Ok(identity)
}

/// Makes the record say `mode` (one GET, and a PUT when something changed). A
/// malformed record is replaced.
pub async fn ensure_mode(client: &dyn ReplicaClient, mode: FileMode) -> Result<(), StoreError> {
    let mut record = read_or_default(client).await?;
    if record.mode == Some(mode) {
        return Ok(());
    }
    record.mode = Some(mode);
    write(client, &record).await
}

/// The record, or an empty one if there is none or it is malformed (it is about to
/// be rewritten).
async fn read_or_default(client: &dyn ReplicaClient) -> Result<RootRecord, StoreError> {
    match read(client).await {
        Ok(r) => Ok(r.unwrap_or_default()),
        Err(RootRecordError::Store(e)) => Err(e),
        Err(e @ RootRecordError::Malformed { .. }) => {
            tracing::warn!(error = %Chain(&e), "replacing the replica's record");
            Ok(RootRecord::default())
        }
    }
}

/// Reads the local database's id from its spool directory.
pub fn read_local_id(spool_dir: &std::path::Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(spool_dir.join(LOCAL_ID_FILE)) {
        Ok(s) => Ok(Some(s.trim().to_owned()).filter(|s| !s.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Records the local database's id in its spool directory (temp file, rename), with
/// the spool's file mode.
pub fn write_local_id(
    spool_dir: &std::path::Path,
    id: &str,
    mode: FileMode,
) -> std::io::Result<()> {
    use std::io::Write;
    let path = spool_dir.join(LOCAL_ID_FILE);
    if read_local_id(spool_dir)?.as_deref() == Some(id) {
        return Ok(());
    }
    let tmp = spool_dir.join(format!(".{LOCAL_ID_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = crate::file_mode::create_new(&tmp, mode.file())?;
    f.write_all(id.as_bytes())?;
    drop(f);
    std::fs::rename(&tmp, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_survive_a_rewrite() {
        let text = r#"{"mode":"0640","db_id":"abc","generation":3}"#;
        let mut r: RootRecord = serde_json::from_str(text).unwrap();
        assert_eq!(r.mode, FileMode::new(0o640));
        r.mode = FileMode::new(0o600);
        let back: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(
            back,
            serde_json::json!({"mode": "0600", "db_id": "abc", "generation": 3})
        );
        let empty: RootRecord = serde_json::from_str("{}").unwrap();
        assert_eq!(empty.mode, None);
        assert!(serde_json::from_str::<RootRecord>(r#"{"mode":"rw"}"#).is_err());
    }
}
