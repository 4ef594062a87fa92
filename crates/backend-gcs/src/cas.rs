//! Compare-and-swap of small records (the lease): a multipart upload with
//! `ifGenerationMatch` (0: only if absent), the generation as the version.
//! Multipart, because fake-gcs-server enforces preconditions only there (real GCS
//! enforces them on every upload type). Not retried here: a resent conditional
//! write whose first attempt landed would be refused; the caller reads back instead.

use bytes::Bytes;
use gcloud_storage::http::objects::Object;
use gcloud_storage::http::objects::download::Range as GcsRange;
use gcloud_storage::http::objects::get::GetObjectRequest;
use gcloud_storage::http::objects::upload::{UploadObjectRequest, UploadType};
use replica_core::client::{MAX_VERSIONED_LEN, Version, Versioned, record_too_large};
use replica_core::error::{Op, StoreError};
use replica_core::key::Key;

use crate::GcsClient;
use crate::error::{Failure, Kind};

impl GcsClient {
    pub(crate) async fn get_versioned_object(&self, key: &Key) -> Result<Versioned, StoreError> {
        // Metadata first, then the body of exactly that generation, so the two
        // belong together; a generation replaced in between is read again.
        for _ in 0..3 {
            let obj = self
                .get_meta(key)
                .await
                .map_err(|f| self.fail(f, Op::Get, key))?;
            if u64::try_from(obj.size).unwrap_or(u64::MAX) > MAX_VERSIONED_LEN as u64 {
                return Err(record_too_large(key));
            }
            let req = GetObjectRequest {
                bucket: self.config.bucket.clone(),
                object: self.full_key(key),
                generation: Some(obj.generation),
                ..Default::default()
            };
            match self
                .client
                .download_object(&req, &GcsRange::default())
                .await
            {
                Ok(body) => {
                    return Ok(Versioned {
                        body: body.into(),
                        version: Version::new(obj.generation.to_string()),
                    });
                }
                Err(e) => {
                    let f = Failure::from_http(&e);
                    if f.kind != Kind::NotFound {
                        return Err(self.fail(f, Op::Get, key));
                    }
                }
            }
        }
        Err(StoreError::Transient {
            op: Op::Get,
            key: key.to_string(),
            source: "the object changed while it was read, three times".into(),
        })
    }

    pub(crate) async fn put_object_if(
        &self,
        key: &Key,
        body: Bytes,
        expected: Option<&Version>,
    ) -> Result<Version, StoreError> {
        let generation = match expected {
            None => 0,
            Some(v) => v
                .as_str()
                .parse::<i64>()
                .map_err(|_| StoreError::Conflict {
                    key: key.to_string(),
                })?,
        };
        let req = UploadObjectRequest {
            bucket: self.config.bucket.clone(),
            if_generation_match: Some(generation),
            ..Default::default()
        };
        let object = Object {
            name: self.full_key(key),
            content_type: Some("application/json".into()),
            ..Default::default()
        };
        let upload_type = UploadType::Multipart(Box::new(object));
        match self.client.upload_object(&req, body, &upload_type).await {
            Ok(obj) => Ok(Version::new(obj.generation.to_string())),
            Err(e) => {
                let f = Failure::from_http(&e);
                match (f.kind, expected) {
                    (Kind::PreconditionFailed, None) => Err(StoreError::AlreadyExists {
                        key: key.to_string(),
                    }),
                    (Kind::PreconditionFailed | Kind::NotFound, Some(_)) => {
                        Err(StoreError::Conflict {
                            key: key.to_string(),
                        })
                    }
                    _ => Err(self.fail(f, Op::Put, key)),
                }
            }
        }
    }
}
