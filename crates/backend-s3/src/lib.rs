//! The `s3://` backend: a replica in an AWS S3 bucket or an S3-compatible store, laid
//! out as Litestream 0.5 lays out its S3 replicas (`<prefix>/<level %04x>/<min>-<max>.ltx`,
//! creation time in the `litestream-timestamp` user metadata), so either tool can read
//! what the other wrote.
//!
//! # URL
//!
//! `s3://bucket[/prefix][?option=value&…]` with the options
//!
//! | option | meaning |
//! |---|---|
//! | `endpoint` | `http(s)://host[:port]` of an S3-compatible server (path-style by default) |
//! | `region` | region name; else the AWS chain (`AWS_REGION`, profile), else `us-east-1` when an endpoint is given |
//! | `force_path_style` | `true`/`false`; default `true` with an endpoint, `false` without |
//! | `sse` | `AES256`, `aws:kms` or `aws:kms:dsse` |
//! | `sse_kms_key_id` | KMS key for `sse=aws:kms` |
//! | `storage_class` | `STANDARD`, `STANDARD_IA`, `ONEZONE_IA`, `INTELLIGENT_TIERING`, `GLACIER_IR`, … |
//!
//! Unknown or repeated options, credentials in the URL and unusable values are refused.
//! Credentials come from the standard AWS chain only (environment, profile, web
//! identity, container or instance role). The endpoint comes from the URL only:
//! `AWS_ENDPOINT_URL(_S3)` and profile `endpoint_url` settings are ignored, so the URL
//! alone says where the replica is.
//!
//! # Writes
//!
//! Objects up to [`MULTIPART_THRESHOLD`] go up in one `PutObject`; larger ones as a
//! multipart upload streamed part by part from the payload (file parts are read from
//! disk as they are sent, never held whole), aborted if anything fails. Create-only puts
//! use `If-None-Match: *` (on `CompleteMultipartUpload` for multipart), which S3 and
//! moto apply atomically; a refusal is `AlreadyExists`, and the caller decides by
//! content whether the object there is its own (a resend after a lost response).
//!
//! # Use from the conformance suite
//!
//! [`S3Client::from_url`] is async (loading the AWS configuration is). A suite
//! constructor is
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use replica_core::client::ReplicaClient;
//! async fn client(bucket: &str, endpoint: &str) -> Arc<dyn ReplicaClient> {
//!     let prefix = format!("conformance-{:016x}", rand::random::<u64>());
//!     let url = format!("s3://{bucket}/{prefix}?endpoint={endpoint}&region=us-east-1");
//!     Arc::new(backend_s3::S3Client::from_url(&url).await.expect("s3 client"))
//! }
//! ```
//!
//! (the bucket must exist; the tests' `tests/it/support.rs` creates one with
//! [`S3Client::sdk_client`]).

mod cas;
mod config;
mod error;

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::config::ResponseChecksumValidation;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::primitives::{ByteStream as SdkStream, Length};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier,
    ServerSideEncryption, StorageClass,
};
use bytes::Bytes;
use replica_core::client::{
    ByteStream, Capabilities, ObjectInfo, Payload, PutMode, PutOptions, ReplicaClient, StoreInfo,
    Version, Versioned, part_size,
};
use replica_core::error::{Chain, Op, StoreError};
use replica_core::key::{Key, KeyPrefix};
use replica_core::layout::LayoutStyle;
use replica_core::meta;
use replica_core::retry::Policy;
use tokio::io::AsyncReadExt;
use tracing::{debug, warn};

pub use crate::config::{KNOWN_OPTIONS, S3Config, Sse};
pub use crate::error::S3Error;
use crate::error::{Failure, Kind};

/// Objects larger than this are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 8 * 1024 * 1024;
/// The smallest part size; grown for huge objects so that no upload needs more than
/// 10,000 parts (the S3 limit).
pub const MIN_PART_SIZE: u64 = 8 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;
/// Parts in flight at once per multipart upload.
const PART_CONCURRENCY: usize = 4;
/// `DeleteObjects` takes at most this many keys.
const DELETE_BATCH: usize = 1000;

/// User metadata holding the LTX creation time, as Litestream writes and reads it.
pub const TIMESTAMP_METADATA: &str = meta::TIMESTAMP;

/// A replica rooted at `s3://bucket/prefix`.
#[derive(Clone)]
pub struct S3Client {
    client: aws_sdk_s3::Client,
    config: S3Config,
    /// `prefix/`, or empty for the bucket root.
    root: String,
    info: StoreInfo,
}

impl std::fmt::Debug for S3Client {
    // The SDK client is left out: its configuration holds the credentials provider.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Client")
            .field("url", &self.info.redacted_url)
            .finish()
    }
}

impl S3Client {
    /// Parses `url` (see the crate docs), loads the AWS configuration (region and
    /// credential chains) and builds the client. No request is sent: a missing bucket
    /// or bad credentials show up on the first operation.
    pub async fn from_url(url: &str) -> Result<Self, StoreError> {
        Self::from_config(S3Config::parse(url)?).await
    }

    pub async fn from_config(config: S3Config) -> Result<Self, StoreError> {
        Self::from_config_with_loader(config, aws_config::defaults(BehaviorVersion::latest())).await
    }

    /// Like [`S3Client::from_config`], starting from a caller's AWS config loader (for
    /// example one with an explicit credentials provider, as the tests use). Retries,
    /// timeouts, the region from the URL and the endpoint are applied on top of it.
    pub async fn from_config_with_loader(
        config: S3Config,
        loader: aws_config::ConfigLoader,
    ) -> Result<Self, StoreError> {
        let mut loader = loader
            // Requests are retried once, by the core's policy (`replica_core::retry`),
            // which knows which of them may be resent.
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    // Time to the first response byte, which for an upload includes
                    // sending the body (up to a part): generous, a guard against hangs.
                    .read_timeout(Duration::from_secs(300))
                    .build(),
            );
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let sdk = loader.load().await;
        let region = match (sdk.region(), &config.endpoint) {
            (Some(r), _) => r.clone(),
            (None, Some(_)) => Region::from_static("us-east-1"),
            (None, None) => {
                return Err(StoreError::InvalidUrl {
                    url: config.to_url_string(),
                    reason: "no region: add ?region=… to the URL, or set AWS_REGION or a \
                             region in the AWS profile"
                        .into(),
                });
            }
        };
        let mut builder = aws_sdk_s3::config::Builder::from(&sdk);
        // The URL is the only source of the endpoint (see the crate docs).
        builder.set_endpoint_url(config.endpoint.clone());
        let s3_config = builder
            .region(region)
            .force_path_style(config.force_path_style)
            // Every replica file carries its own CRC-64, which the LTX decoder checks;
            // the SDK's CRC-32 of each GET would be a second pass over every byte, and
            // of a multipart snapshot it can only warn that it cannot check it.
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        Ok(Self::with_sdk_client(
            aws_sdk_s3::Client::from_conf(s3_config),
            config,
        ))
    }

    /// A client over an SDK client configured by the caller (endpoint, credentials,
    /// retries); `config` supplies the bucket, prefix, SSE and storage class.
    pub fn with_sdk_client(client: aws_sdk_s3::Client, config: S3Config) -> Self {
        let root = if config.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", config.prefix)
        };
        // Credentials are refused at parse time and no option is secret.
        let mut info = StoreInfo::new(
            "s3",
            config.to_url_string(),
            Capabilities {
                create_only: true,
                ranged_get: true,
                // LIST reports LastModified; the LTX time is only in the metadata.
                list_has_ltx_time: false,
            },
        );
        info.layout = LayoutStyle::HexLevel;
        Self {
            client,
            config,
            root,
            info,
        }
    }

    /// The underlying SDK client, for tests and administration (creating buckets).
    pub fn sdk_client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    pub fn config(&self) -> &S3Config {
        &self.config
    }

    pub fn bucket(&self) -> &str {
        &self.config.bucket
    }

    /// The key prefix, without a trailing `/` (empty for the bucket root).
    pub fn prefix(&self) -> &str {
        &self.config.prefix
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.root)
    }

    fn fail(&self, f: Failure, op: Op, key: &str) -> StoreError {
        f.into_store(op, key, &self.config.bucket)
    }

    fn sse(&self) -> (Option<ServerSideEncryption>, Option<String>) {
        match &self.config.sse {
            None => (None, None),
            Some(sse) => (
                Some(ServerSideEncryption::from(sse.as_str())),
                sse.kms_key_id().map(str::to_owned),
            ),
        }
    }

    fn storage_class(&self) -> Option<StorageClass> {
        self.config.storage_class.as_deref().map(StorageClass::from)
    }

    async fn put_single(&self, job: &PutJob<'_>) -> Result<(), Failure> {
        let PutJob {
            full,
            body,
            size,
            metadata,
            mode,
            ..
        } = job;
        let (size, mode) = (*size, *mode);
        let (sse, kms_key) = self.sse();
        let mut req = self
            .client
            .put_object()
            .bucket(&self.config.bucket)
            .key(full)
            .body(body.stream(0, size).await?)
            .content_length(to_i64(size))
            .set_metadata(Some(metadata.clone()))
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms_key)
            .set_storage_class(self.storage_class());
        if mode == PutMode::CreateOnly {
            req = req.if_none_match("*");
        }
        req.send()
            .await
            .map(|_| ())
            .map_err(|e| Failure::from_sdk(&e))
    }

    /// A multipart upload of `body`; any failure aborts the upload (best effort: a
    /// failed abort leaves an incomplete upload, which a bucket lifecycle rule for
    /// incomplete multipart uploads cleans up).
    async fn put_multipart(&self, job: &PutJob<'_>) -> Result<(), StoreError> {
        let PutJob {
            key,
            full,
            metadata,
            ..
        } = job;
        let (key, full) = (*key, full.as_str());
        let (sse, kms_key) = self.sse();
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.config.bucket)
            .key(full)
            .set_metadata(Some(metadata.clone()))
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms_key)
            .set_storage_class(self.storage_class())
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .send()
            .await
            .map_err(|e| self.fail(Failure::from_sdk(&e), Op::Put, key))?;
        let Some(upload_id) = created.upload_id().map(str::to_owned) else {
            return Err(self.fail(
                Failure::other("CreateMultipartUpload returned no upload id"),
                Op::Put,
                key,
            ));
        };
        let result = self.upload_parts_and_complete(job, &upload_id).await;
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Err(abort) = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.config.bucket)
                    .key(full)
                    .upload_id(&upload_id)
                    .send()
                    .await
                {
                    let f = Failure::from_sdk(&abort);
                    if f.kind != Kind::NoSuchUpload {
                        warn!(key, detail = %f.detail, "could not abort a failed multipart upload");
                    }
                }
                Err(e)
            }
        }
    }

    async fn upload_parts_and_complete(
        &self,
        job: &PutJob<'_>,
        upload_id: &str,
    ) -> Result<(), StoreError> {
        let PutJob {
            key,
            full,
            body,
            size,
            mode,
            ..
        } = job;
        let (key, full, size, mode) = (*key, full.as_str(), *size, *mode);
        let part_size = part_size(size, MIN_PART_SIZE, MAX_PARTS);
        let part_count = size.div_ceil(part_size);
        let mut parts = Vec::with_capacity(usize::try_from(part_count).unwrap_or(0));
        let mut tasks = tokio::task::JoinSet::new();
        let mut next = 0u64;
        while next < part_count || !tasks.is_empty() {
            while next < part_count && tasks.len() < PART_CONCURRENCY {
                let offset = next * part_size;
                let len = part_size.min(size - offset);
                // Part numbers are 1-based and at most MAX_PARTS, so they fit an i32.
                let number = i32::try_from(next + 1).unwrap_or(i32::MAX);
                let body = body.clone();
                let client = self.client.clone();
                let (key, bucket) = (key.to_owned(), self.config.bucket.clone());
                let (full, upload_id) = (full.to_owned(), upload_id.to_owned());
                // A part is idempotent (a resend replaces it), so each is retried on its
                // own rather than the whole upload.
                tasks.spawn(async move {
                    let fail = |f: Failure| f.into_store(Op::Put, &key, &bucket);
                    Policy::REQUEST
                        .run(Op::Put, &key, || async {
                            let stream = body.stream(offset, len).await.map_err(fail)?;
                            let out = client
                                .upload_part()
                                .bucket(&bucket)
                                .key(&full)
                                .upload_id(&upload_id)
                                .part_number(number)
                                .content_length(to_i64(len))
                                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                                .body(stream)
                                .send()
                                .await
                                .map_err(|e| fail(Failure::from_sdk(&e)))?;
                            Ok(CompletedPart::builder()
                                .part_number(number)
                                .set_e_tag(out.e_tag().map(str::to_owned))
                                .set_checksum_crc32(out.checksum_crc32().map(str::to_owned))
                                .build())
                        })
                        .await
                });
                next += 1;
            }
            match tasks.join_next().await {
                Some(Ok(Ok(part))) => parts.push(part),
                // Dropping the JoinSet on return aborts the parts still in flight.
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(join)) => {
                    if join.is_panic() {
                        std::panic::resume_unwind(join.into_panic());
                    }
                    return Err(self.fail(Failure::other(join.to_string()), Op::Put, key));
                }
                None => break,
            }
        }
        parts.sort_by_key(|p| p.part_number());
        let mut req = self
            .client
            .complete_multipart_upload()
            .bucket(&self.config.bucket)
            .key(full)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            );
        if mode == PutMode::CreateOnly {
            req = req.if_none_match("*");
        }
        req.send()
            .await
            .map(|_| ())
            .map_err(|e| self.fail(Failure::from_sdk(&e), Op::Put, key))
    }

    async fn head_object(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| self.fail(Failure::from_sdk(&e), Op::Head, key))?;
        let persisted = out
            .metadata()
            .and_then(|m| m.get(TIMESTAMP_METADATA))
            .and_then(|s| {
                let t = meta::parse_timestamp(s);
                if t.is_none() {
                    warn!(key, value = %s, "unparsable {TIMESTAMP_METADATA} metadata; using LastModified");
                }
                t
            });
        Ok(ObjectInfo {
            key: key.to_owned(),
            size: out
                .content_length()
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0),
            last_modified: out
                .last_modified()
                .and_then(|d| SystemTime::try_from(*d).ok()),
            ltx_time: persisted,
        })
    }
}

#[async_trait]
impl ReplicaClient for S3Client {
    fn info(&self) -> &StoreInfo {
        &self.info
    }

    fn set_file_mode(&self, _mode: replica_core::file_mode::FileMode) {
        // Object stores keep no permission bits.
    }

    /// # Create-only puts
    ///
    /// `If-None-Match: *` on `PutObject` (or `CompleteMultipartUpload`); a 412 is
    /// [`StoreError::AlreadyExists`], a 409 `ConditionalRequestConflict` (a concurrent
    /// conditional write still in flight) is transient. A resend after a lost response
    /// (by the core's retry policy) is refused like anyone else's write; the caller
    /// tells its own object from another's by content (the shipper compares the
    /// post-apply checksum in the trailer), so no per-put token is needed.
    async fn put(&self, key: &Key, body: Payload, opts: &PutOptions) -> Result<(), StoreError> {
        let key = key.as_str();
        let full = self.full_key(key);
        let body = Body::new(body);
        let size = body.size().await.map_err(|f| self.fail(f, Op::Put, key))?;
        let mut metadata = HashMap::new();
        if let Some(ts) = opts.timestamp {
            metadata.insert(TIMESTAMP_METADATA.to_owned(), meta::format_timestamp(ts));
        }
        let multipart = size > MULTIPART_THRESHOLD;
        let job = PutJob {
            key,
            full,
            body,
            size,
            metadata,
            mode: opts.mode,
        };
        if multipart {
            self.put_multipart(&job).await?;
        } else {
            self.put_single(&job)
                .await
                .map_err(|f| self.fail(f, Op::Put, key))?;
        }
        debug!(key, size, multipart, "put");
        Ok(())
    }

    /// A `range` reaching past the end yields the bytes that exist (none if it starts
    /// at or past the end), like the file backend.
    async fn get(&self, key: &Key, range: Option<Range<u64>>) -> Result<ByteStream, StoreError> {
        let key = key.as_str();
        if let Some(r) = &range {
            if r.start > r.end {
                return Err(self.fail(
                    Failure::other(format!("invalid byte range {}..{}", r.start, r.end)),
                    Op::Get,
                    key,
                ));
            }
            if r.start == r.end {
                // HTTP cannot ask for zero bytes; check the object exists instead.
                self.head_object(key).await.map_err(|e| retag(e, Op::Get))?;
                return Ok(Box::pin(tokio::io::empty()));
            }
        }
        let mut req = self
            .client
            .get_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key));
        if let Some(r) = &range {
            // "To the end" is said as such: SeaweedFS answers an empty body to a last
            // byte far past the object's end, which S3 would clamp.
            req = req.range(if r.end == u64::MAX {
                format!("bytes={}-", r.start)
            } else {
                format!("bytes={}-{}", r.start, r.end - 1)
            });
        }
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) => {
                let f = Failure::from_sdk(&e);
                if f.kind == Kind::InvalidRange {
                    return Ok(Box::pin(tokio::io::empty()));
                }
                return Err(self.fail(f, Op::Get, key));
            }
        };
        let ranged_reply = out.content_range().is_some();
        let mut reader = out.body.into_async_read();
        match range {
            Some(r) if !ranged_reply => {
                // A store that ignored the Range header sent the whole object: skip to
                // the start and stop at the end ourselves.
                warn!(key, "the store ignored a Range request; skipping locally");
                tokio::io::copy(&mut (&mut reader).take(r.start), &mut tokio::io::sink())
                    .await
                    .map_err(|e| {
                        self.fail(
                            Failure::new(Kind::Transient, Chain(&e).to_string()),
                            Op::Get,
                            key,
                        )
                    })?;
                Ok(Box::pin(reader.take(r.end - r.start)))
            }
            _ => Ok(Box::pin(reader)),
        }
    }

    async fn head(&self, key: &Key) -> Result<ObjectInfo, StoreError> {
        self.head_object(key).await
    }

    async fn list(
        &self,
        prefix: &KeyPrefix,
        start_after: Option<&str>,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        let prefix = prefix.as_str();
        let full_prefix = self.full_key(prefix);
        let err_key = if prefix.is_empty() {
            "<replica root>"
        } else {
            prefix
        };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = self
                .client
                .list_objects_v2()
                .bucket(&self.config.bucket)
                .prefix(&full_prefix);
            match &token {
                Some(t) => req = req.continuation_token(t),
                None => {
                    if let Some(after) = start_after {
                        req = req.start_after(self.full_key(after));
                    }
                }
            }
            // A page is one request of many: retried on its own.
            let page = Policy::REQUEST
                .run(Op::List, err_key, || async {
                    req.clone()
                        .send()
                        .await
                        .map_err(|e| self.fail(Failure::from_sdk(&e), Op::List, err_key))
                })
                .await?;
            for obj in page.contents() {
                let Some(rel) = obj.key().and_then(|k| k.strip_prefix(self.root.as_str())) else {
                    continue;
                };
                if start_after.is_some_and(|a| rel <= a) {
                    continue;
                }
                out.push(ObjectInfo {
                    key: rel.to_owned(),
                    size: obj.size().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                    last_modified: obj
                        .last_modified()
                        .and_then(|d| SystemTime::try_from(*d).ok()),
                    ltx_time: None,
                });
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => {
                    if token.as_deref() == Some(t) {
                        return Err(self.fail(
                            Failure::other("the store returned the same continuation token twice"),
                            Op::List,
                            err_key,
                        ));
                    }
                    token = Some(t.to_owned());
                }
                _ => break,
            }
        }
        // S3 lists in key (UTF-8 byte) order already; some compatibles do not.
        out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// `DeleteObjects` in batches of up to 1000 keys, quiet mode (only failures are
    /// reported). S3 does not report missing keys; a store that reports `NoSuchKey` is
    /// ignored too. Other per-key failures make the call fail, naming the first failed
    /// key, the error code, and how many keys failed.
    async fn delete_many(&self, keys: &[Key]) -> Result<(), StoreError> {
        for batch in keys.chunks(DELETE_BATCH) {
            let objects = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(self.full_key(k)).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.fail(Failure::other(e.to_string()), Op::Delete, &batch[0]))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| self.fail(Failure::other(e.to_string()), Op::Delete, &batch[0]))?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.config.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| self.fail(Failure::from_sdk(&e), Op::Delete, &batch[0]))?;
            let failed: Vec<_> = out
                .errors()
                .iter()
                .filter(|e| e.code() != Some("NoSuchKey"))
                .collect();
            if let Some(first) = failed.first() {
                let key = first
                    .key()
                    .map(|k| k.strip_prefix(self.root.as_str()).unwrap_or(k).to_owned())
                    .unwrap_or_default();
                let mut f = error::service_failure(first.code(), first.message(), None, None);
                if failed.len() > 1 {
                    f.detail
                        .push_str(&format!(" (and {} more keys failed)", failed.len() - 1));
                }
                return Err(self.fail(f, Op::Delete, &key));
            }
        }
        Ok(())
    }

    async fn get_versioned(&self, key: &Key) -> Result<Versioned, StoreError> {
        self.get_versioned_object(key).await
    }

    async fn put_if(
        &self,
        key: &Key,
        body: Bytes,
        expected: Option<&Version>,
    ) -> Result<Version, StoreError> {
        self.put_object_if(key, body, expected).await
    }
}

/// The operation of an error produced by a helper on behalf of another operation.
fn retag(e: StoreError, op: Op) -> StoreError {
    match e {
        StoreError::PermissionDenied { key, detail, .. } => {
            StoreError::PermissionDenied { op, key, detail }
        }
        StoreError::Transient { key, source, .. } => StoreError::Transient { op, key, source },
        StoreError::Throttled {
            key,
            retry_after,
            source,
            ..
        } => StoreError::Throttled {
            op,
            key,
            retry_after,
            source,
        },
        StoreError::Other { key, source, .. } => StoreError::Other { op, key, source },
        e => e,
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One put call: where, what, and how.
struct PutJob<'a> {
    /// The key relative to the replica root, for errors.
    key: &'a str,
    /// The full S3 key.
    full: String,
    body: Body,
    size: u64,
    metadata: HashMap<String, String>,
    mode: PutMode,
}

/// A put's payload, cheap to clone into part-upload tasks.
#[derive(Debug, Clone)]
enum Body {
    Bytes(Bytes),
    File(std::sync::Arc<Path>),
}

impl Body {
    fn new(p: Payload) -> Self {
        match p {
            Payload::Bytes(b) => Body::Bytes(b),
            Payload::File(path) => Body::File(path.into()),
        }
    }

    async fn size(&self) -> Result<u64, Failure> {
        match self {
            Body::Bytes(b) => Ok(b.len() as u64),
            Body::File(path) => tokio::fs::metadata(path)
                .await
                .map(|m| m.len())
                .map_err(|e| source_failure(path, &e.to_string())),
        }
    }

    /// `len` bytes from `offset`, as a retryable SDK body: bytes are sliced, files are
    /// read from disk as the request is sent (and re-read on a retry).
    async fn stream(&self, offset: u64, len: u64) -> Result<SdkStream, Failure> {
        match self {
            Body::Bytes(b) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                let end = usize::try_from(offset + len)
                    .unwrap_or(usize::MAX)
                    .min(b.len());
                Ok(SdkStream::from(b.slice(start..end)))
            }
            Body::File(path) => SdkStream::read_from()
                .path(path.as_ref())
                .offset(offset)
                .length(Length::Exact(len))
                .buffer_size(256 * 1024)
                .build()
                .await
                .map_err(|e| source_failure(path, &Chain(&e).to_string())),
        }
    }
}

/// A failure to read the put's payload file: not an object-store error, and not
/// worth retrying.
fn source_failure(path: &Path, e: &str) -> Failure {
    Failure::other(format!("reading payload file {}: {e}", path.display()))
}

/// Adds this backend's schemes (`s3://`) to `registry`.
pub fn register(registry: &mut replica_core::registry::Registry) {
    registry.register("s3", open);
}

fn open(url: String) -> replica_core::registry::OpenFuture {
    Box::pin(async move {
        let client = S3Client::from_url(&url).await?;
        Ok(std::sync::Arc::new(client) as std::sync::Arc<dyn ReplicaClient>)
    })
}
