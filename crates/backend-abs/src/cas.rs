//! Compare-and-swap of small records (the lease): a single Put Blob with `If-Match:
//! <etag>` or `If-None-Match: *`, the ETag as the version (Azurite enforces both).

use azure_storage_blob::models::{BlobClientDownloadOptions, BlockBlobClientUploadOptions};
use bytes::Bytes;
use futures_util::TryStreamExt as _;
use replica_core::client::{
    MAX_VERSIONED_LEN, Version, Versioned, missing_version, record_too_large,
};
use replica_core::error::{Op, StoreError};
use replica_core::key::Key;

use crate::{AbsClient, describe, http_parts, map_err};

impl AbsClient {
    pub(crate) async fn get_versioned_blob(&self, key: &Key) -> Result<Versioned, StoreError> {
        let c = self.container_client()?;
        let rsp = c
            .blob_client(&self.full_key(key))
            .download(Some(BlobClientDownloadOptions::default()))
            .await
            .map_err(|e| map_err(&e, Op::Get, key))?;
        let version = rsp
            .properties
            .etag
            .as_ref()
            .map(|e| Version::new(e.to_string()))
            .ok_or_else(|| missing_version(Op::Get, key))?;
        let mut body = Vec::new();
        let mut stream = rsp.body;
        while let Some(chunk) = stream.try_next().await.map_err(|e| StoreError::Transient {
            op: Op::Get,
            key: key.to_string(),
            source: describe(&e).into(),
        })? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_VERSIONED_LEN {
                return Err(record_too_large(key));
            }
        }
        Ok(Versioned {
            body: body.into(),
            version,
        })
    }

    pub(crate) async fn put_blob_if(
        &self,
        key: &Key,
        body: Bytes,
        expected: Option<&Version>,
    ) -> Result<Version, StoreError> {
        let c = self.container_client()?;
        let opts = BlockBlobClientUploadOptions {
            if_match: expected.map(|v| v.as_str().into()),
            if_none_match: expected.is_none().then(|| "*".into()),
            // One Put Blob request, never staged blocks.
            partition_size: std::num::NonZero::new(body.len() as u64 + 1),
            ..Default::default()
        };
        match c
            .blob_client(&self.full_key(key))
            .block_blob_client()
            .upload(body.into(), Some(opts))
            .await
        {
            Ok(r) => r
                .etag
                .map(|e| Version::new(e.to_string()))
                .ok_or_else(|| missing_version(Op::Put, key)),
            Err(e) => {
                let refused = matches!(http_parts(&e), Some((s, code)) if u16::from(s) == 412
                    || (u16::from(s) == 409 && code == Some("BlobAlreadyExists"))
                    || (u16::from(s) == 404 && expected.is_some()));
                match (refused, expected) {
                    (true, None) => Err(StoreError::AlreadyExists {
                        key: key.to_string(),
                    }),
                    (true, Some(_)) => Err(StoreError::Conflict {
                        key: key.to_string(),
                    }),
                    (false, _) => Err(map_err(&e, Op::Put, key)),
                }
            }
        }
    }
}
