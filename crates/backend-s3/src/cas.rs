//! Compare-and-swap of small records (the lease): `PutObject` with `If-Match:
//! <etag>` or `If-None-Match: *`, the ETag as the version. S3 has enforced both since
//! 2024; moto and SeaweedFS do too.

use aws_sdk_s3::primitives::ByteStream as SdkStream;
use bytes::Bytes;
use replica_core::client::{
    MAX_VERSIONED_LEN, Version, Versioned, missing_version, record_too_large,
};
use replica_core::error::{Op, StoreError};
use replica_core::key::Key;
use tokio::io::AsyncReadExt;

use crate::S3Client;
use crate::error::{Failure, Kind};

impl S3Client {
    pub(crate) async fn get_versioned_object(&self, key: &Key) -> Result<Versioned, StoreError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| self.fail(Failure::from_sdk(&e), Op::Get, key))?;
        let version = etag(out.e_tag(), key, Op::Get)?;
        let mut body = Vec::new();
        out.body
            .into_async_read()
            .take(MAX_VERSIONED_LEN as u64 + 1)
            .read_to_end(&mut body)
            .await
            .map_err(|e| StoreError::body_broken(Op::Get, key, e))?;
        if body.len() > MAX_VERSIONED_LEN {
            return Err(record_too_large(key));
        }
        Ok(Versioned {
            body: body.into(),
            version,
        })
    }

    pub(crate) async fn put_object_if(
        &self,
        key: &Key,
        body: Bytes,
        expected: Option<&Version>,
    ) -> Result<Version, StoreError> {
        let len = i64::try_from(body.len()).unwrap_or(i64::MAX);
        let (sse, kms_key) = self.sse();
        let mut req = self
            .client
            .put_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .content_type("application/json")
            .content_length(len)
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms_key)
            .body(SdkStream::from(body));
        req = match expected {
            Some(v) => req.if_match(v.as_str()),
            None => req.if_none_match("*"),
        };
        match req.send().await {
            Ok(out) => etag(out.e_tag(), key, Op::Put),
            Err(e) => {
                let f = Failure::from_sdk(&e);
                match (f.kind, expected) {
                    (Kind::PreconditionFailed | Kind::ConditionalConflict, None) => {
                        Err(StoreError::AlreadyExists {
                            key: key.to_string(),
                        })
                    }
                    // A conditional put on a key that is gone fails the same way.
                    (
                        Kind::PreconditionFailed | Kind::ConditionalConflict | Kind::NoSuchKey,
                        Some(_),
                    ) => Err(StoreError::Conflict {
                        key: key.to_string(),
                    }),
                    _ => Err(self.fail(f, Op::Put, key)),
                }
            }
        }
    }
}

fn etag(tag: Option<&str>, key: &Key, op: Op) -> Result<Version, StoreError> {
    tag.map(Version::new)
        .ok_or_else(|| missing_version(op, key))
}
