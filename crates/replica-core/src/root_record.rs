//! What the replica records about its database, in one small JSON object at the
//! replica root (`replica-db.json`). Litestream reads only its level directories, so
//! the object is invisible to it, as it is to our own listing (not an LTX name).
//!
//! Today it holds the database's file mode, which a restore gives the restored file.
//! Fields this version does not know are kept when it rewrites the record, so an
//! older binary does not erase what a newer one recorded.

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::client::{Payload, PutMode, PutOptions, ReplicaClient};
use crate::error::{Op, StoreError};
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
    /// Fields of newer versions, written back as they were read.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

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
        .map_err(|e| StoreError::from_io(Op::Get, KEY, e))?;
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

/// Makes the record say `mode`, writing it only if it is absent or says otherwise
/// (one GET, and a PUT when something changed). A malformed record is replaced.
pub async fn ensure_mode(client: &dyn ReplicaClient, mode: FileMode) -> Result<(), StoreError> {
    let mut record = match read(client).await {
        Ok(r) => r.unwrap_or_default(),
        Err(RootRecordError::Store(e)) => return Err(e),
        Err(e @ RootRecordError::Malformed { .. }) => {
            tracing::warn!(error = %e, "replacing the replica's record");
            RootRecord::default()
        }
    };
    if record.mode == Some(mode) {
        return Ok(());
    }
    record.mode = Some(mode);
    write(client, &record).await
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
