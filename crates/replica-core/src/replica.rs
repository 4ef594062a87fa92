//! A replica: a [`ReplicaClient`] seen through Litestream's layout, as a set of LTX files.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use crate::client::{Payload, PutMode, PutOptions, ReplicaClient};
use crate::error::StoreError;
use crate::layout::{FileId, LayoutStyle, MAX_LEVEL};

/// One LTX file present in the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub id: FileId,
    pub key: String,
    pub size: u64,
    /// Creation time as persisted by the writer (Litestream's notion of "CreatedAt").
    pub created: Option<SystemTime>,
}

#[derive(Debug, Clone)]
pub struct Replica {
    client: Arc<dyn ReplicaClient>,
    style: LayoutStyle,
}

impl Replica {
    pub fn new(client: Arc<dyn ReplicaClient>) -> Self {
        let style = client.layout_style();
        Self { client, style }
    }

    pub fn client(&self) -> &Arc<dyn ReplicaClient> {
        &self.client
    }

    pub fn url(&self) -> String {
        self.client.redacted_url()
    }

    pub fn key(&self, id: FileId) -> String {
        self.style.key(id)
    }

    /// Lists the LTX files of one level (or all levels), in TXID order per level.
    /// Objects that are not LTX files of the layout are ignored, as Litestream does.
    /// Costs one LIST per level (plus paging).
    pub async fn list_files(&self, level: Option<u8>) -> Result<Vec<RemoteFile>, StoreError> {
        let levels: Vec<u8> = match level {
            Some(l) => vec![l],
            None => (0..=MAX_LEVEL).collect(),
        };
        let mut out = Vec::new();
        for level in levels {
            let prefix = self.style.level_prefix(level);
            for obj in self.client.list(&prefix, None).await? {
                let Some(id) = self.style.parse_key(&obj.key) else {
                    continue;
                };
                if id.level != level {
                    continue;
                }
                out.push(RemoteFile {
                    id,
                    key: obj.key,
                    size: obj.size,
                    created: obj.created,
                });
            }
        }
        out.sort_by_key(|f| (f.id.level, f.id.range));
        Ok(out)
    }

    /// Fills in `created` from HEAD where the listing did not carry it.
    pub async fn fill_created(&self, files: &mut [RemoteFile]) -> Result<(), StoreError> {
        if self.client.capabilities().list_has_created {
            return Ok(());
        }
        for f in files.iter_mut().filter(|f| f.created.is_none()) {
            f.created = self.client.head(&f.key).await?.created;
        }
        Ok(())
    }

    /// Uploads a local LTX file under its layout key.
    pub async fn upload(
        &self,
        id: FileId,
        path: &Path,
        timestamp: SystemTime,
    ) -> Result<(), StoreError> {
        let opts = PutOptions {
            mode: PutMode::Overwrite,
            timestamp: Some(timestamp),
        };
        self.client
            .put(&self.key(id), Payload::File(path.to_path_buf()), &opts)
            .await
    }
}
