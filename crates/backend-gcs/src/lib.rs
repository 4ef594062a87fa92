//! The `gs://` backend (also spelled `gcs://`): a replica in a Google Cloud Storage
//! bucket, over the JSON API (`gcloud-storage`), laid out as Litestream 0.5 lays out its
//! gs replicas (`<prefix>/ltx/<level>/<min>-<max>.ltx`, creation time in the
//! `litestream-timestamp` object metadata), so either tool reads what the other wrote.
//!
//! # URL
//!
//! `gs://bucket[/prefix][?endpoint=http(s)://host[:port]]`. Unknown or repeated
//! options, credentials in the URL and bad bucket names are refused.
//!
//! Credentials come from Application Default Credentials
//! (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's user credentials, workload identity, the
//! metadata server). With an `endpoint` option, or else `STORAGE_EMULATOR_HOST` (as
//! Litestream and Google's SDKs read it), requests go to that emulator, anonymously.
//!
//! # Writes
//!
//! - Create-only puts are `uploadType=multipart` uploads with `ifGenerationMatch=0`
//!   (streamed from the payload, whatever its size): GCS applies the precondition
//!   atomically, and fake-gcs-server enforces it only on this upload type. A refusal
//!   (412) is `AlreadyExists`, and the caller decides by content whether the object
//!   there is its own (a resend after a lost response).
//! - Overwrites up to [`RESUMABLE_THRESHOLD`] are one multipart upload; larger ones use
//!   a resumable session, sent in [`CHUNK_SIZE`] chunks read from the payload as they
//!   go, resuming from the offset GCS confirms after a failed chunk.
//!
//! This client translates and leaves retrying to `replica_core::retry` (429 and 503
//! are `Throttled`; 408, other 5xx and connection failures `Transient`), except
//! inside operations of many requests: each page of a listing, each delete and each
//! chunk of a resumable upload is retried on its own under the same policy.

mod cas;
mod config;
mod error;

use std::collections::HashMap;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use gcloud_storage::client::{Client, ClientConfig};
use gcloud_storage::http::objects::Object;
use gcloud_storage::http::objects::delete::DeleteObjectRequest;
use gcloud_storage::http::objects::download::Range as GcsRange;
use gcloud_storage::http::objects::get::GetObjectRequest;
use gcloud_storage::http::objects::list::ListObjectsRequest;
use gcloud_storage::http::objects::upload::{UploadObjectRequest, UploadType};
use gcloud_storage::http::resumable_upload_client::{ChunkSize, UploadStatus};
use replica_core::client::{
    ByteStream, Capabilities, ObjectInfo, Payload, PutMode, PutOptions, ReplicaClient, StoreInfo,
    Version, Versioned,
};
use replica_core::error::{Op, StoreError};
use replica_core::key::{Key, KeyPrefix};
use replica_core::meta;
use replica_core::retry::Policy;
use tokio::io::AsyncReadExt;
use tracing::{debug, warn};

pub use crate::config::{EMULATOR_ENV, GcsConfig, KNOWN_OPTIONS};
pub use crate::error::GcsError;
use crate::error::{Failure, Kind};

/// Overwrites larger than this go up as a resumable upload.
pub const RESUMABLE_THRESHOLD: u64 = 8 * 1024 * 1024;
/// Resumable chunk size (a multiple of 256 KiB, as GCS requires).
pub const CHUNK_SIZE: u64 = 8 * 1024 * 1024;
/// Object metadata holding the LTX creation time, as Litestream writes and reads it.
pub const TIMESTAMP_METADATA: &str = meta::TIMESTAMP;
/// Deletes in flight at once (the JSON API deletes one object per request).
const DELETE_CONCURRENCY: usize = 16;
const LIST_PAGE: i32 = 1000;

/// A replica rooted at `gs://bucket/prefix`.
#[derive(Clone)]
pub struct GcsClient {
    client: Client,
    config: GcsConfig,
    /// `prefix/`, or empty for the bucket root.
    root: String,
    info: StoreInfo,
}

impl std::fmt::Debug for GcsClient {
    // The client is left out: it holds the token source.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsClient")
            .field("url", &self.info.redacted_url)
            .finish()
    }
}

/// Without timeouts a connection that stops answering (a dropped NAT entry, a
/// half-open socket) would hang its request for ever. A read timeout bounds the
/// silence between bytes, not a whole transfer, so large objects are unaffected.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(30);

fn http_client(config: &GcsConfig) -> Result<reqwest_middleware::ClientWithMiddleware, StoreError> {
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .build()
        .map_err(|e| StoreError::InvalidUrl {
            url: config.to_url_string(),
            reason: format!("cannot build the HTTP client: {e}"),
        })?;
    Ok(reqwest_middleware::ClientBuilder::new(client).build())
}

impl GcsClient {
    /// Parses `url` (see the crate docs) and builds the client: anonymous against an
    /// emulator (`endpoint` option or `STORAGE_EMULATOR_HOST`), else with Application
    /// Default Credentials, which fail here if none are found.
    pub async fn from_url(url: &str) -> Result<GcsClient, StoreError> {
        Self::from_config(GcsConfig::parse(url)?).await
    }

    pub async fn from_config(config: GcsConfig) -> Result<GcsClient, StoreError> {
        let emulator = match &config.endpoint {
            Some(e) => Some(e.clone()),
            None => match std::env::var(EMULATOR_ENV) {
                Ok(v) if !v.trim().is_empty() => {
                    Some(config::emulator_endpoint(&v).map_err(|reason| {
                        StoreError::InvalidUrl {
                            url: config.to_url_string(),
                            reason,
                        }
                    })?)
                }
                _ => None,
            },
        };
        let mut client_config = match emulator {
            Some(endpoint) => ClientConfig {
                storage_endpoint: endpoint,
                ..Default::default()
            }
            .anonymous(),
            None => ClientConfig::default().with_auth().await.map_err(|e| {
                StoreError::PermissionDenied {
                    op: Op::List,
                    key: "<replica root>".into(),
                    detail: format!(
                        "bucket {}: no usable Application Default Credentials \
                         (GOOGLE_APPLICATION_CREDENTIALS, workload identity or the \
                         metadata server): {e}",
                        config.bucket
                    ),
                }
            })?,
        };
        client_config.http = Some(http_client(&config)?);
        Ok(Self::with_client(Client::new(client_config), config))
    }

    /// A client over a `gcloud-storage` client configured by the caller.
    pub fn with_client(client: Client, config: GcsConfig) -> Self {
        let root = if config.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", config.prefix)
        };
        // Credentials are refused at parse time and no option is secret.
        let info = StoreInfo::new(
            "gs",
            config.to_url_string(),
            Capabilities {
                create_only: true,
                ranged_get: true,
                // The JSON list returns each object's metadata.
                list_has_ltx_time: true,
            },
        );
        Self {
            client,
            config,
            root,
            info,
        }
    }

    /// The underlying client, for tests and administration (creating buckets).
    pub fn gcs_client(&self) -> &Client {
        &self.client
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

    async fn get_meta(&self, key: &str) -> Result<Object, Failure> {
        let req = GetObjectRequest {
            bucket: self.config.bucket.clone(),
            object: self.full_key(key),
            ..Default::default()
        };
        self.client
            .get_object(&req)
            .await
            .map_err(|e| Failure::from_http(&e))
    }

    fn object_info(&self, key: &str, obj: &Object) -> ObjectInfo {
        let persisted = obj
            .metadata
            .as_ref()
            .and_then(|m| m.get(TIMESTAMP_METADATA))
            .and_then(|s| {
                let t = meta::parse_timestamp(s);
                if t.is_none() {
                    warn!(key, value = %s, "unparsable {TIMESTAMP_METADATA} metadata; ignoring it");
                }
                t
            });
        ObjectInfo {
            key: key.to_owned(),
            size: u64::try_from(obj.size).unwrap_or(0),
            last_modified: obj.updated.or(obj.time_created).map(SystemTime::from),
            ltx_time: persisted,
        }
    }

    /// One multipart upload (metadata and body in one request).
    async fn put_multipart(&self, job: &PutJob) -> Result<(), Failure> {
        let req = UploadObjectRequest {
            bucket: self.config.bucket.clone(),
            if_generation_match: (job.mode == PutMode::CreateOnly).then_some(0),
            ..Default::default()
        };
        let upload_type = UploadType::Multipart(Box::new(job.object()));
        let res = match &job.body {
            Payload::Bytes(b) => {
                self.client
                    .upload_object(&req, b.clone(), &upload_type)
                    .await
            }
            Payload::File(path) => {
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| job.body.error(e))?;
                let stream =
                    tokio_util::io::ReaderStream::with_capacity(file.take(job.size), 256 * 1024);
                self.client
                    .upload_streamed_object(&req, stream, &upload_type)
                    .await
            }
        };
        res.map(|_| ()).map_err(|e| Failure::from_http(&e))
    }

    /// A resumable upload session, sent chunk by chunk; after a failed chunk the
    /// session's status says where to resume.
    async fn put_resumable(&self, job: &PutJob) -> Result<(), Failure> {
        let req = UploadObjectRequest {
            bucket: self.config.bucket.clone(),
            if_generation_match: (job.mode == PutMode::CreateOnly).then_some(0),
            ..Default::default()
        };
        let upload_type = UploadType::Multipart(Box::new(job.object()));
        let session = self
            .client
            .prepare_resumable_upload(&req, &upload_type)
            .await
            .map_err(|e| Failure::from_http(&e))?;
        let total = job.size;
        let mut offset = 0u64;
        let mut failures = 0u32;
        let mut backoff = Policy::REQUEST.backoff();
        loop {
            let len = CHUNK_SIZE.min(total - offset);
            let chunk = job.body.read_range(offset, len).await?;
            let range = ChunkSize::new(offset, offset + len - 1, Some(total));
            let status = match session.upload_multiple_chunk(chunk, &range).await {
                Ok(s) => s,
                Err(e) => {
                    let f = Failure::from_http(&e);
                    failures += 1;
                    if !f.kind.is_transient() || failures >= Policy::REQUEST.attempts {
                        return Err(f);
                    }
                    let delay = match f.kind {
                        Kind::Throttled => backoff.next_throttled(None),
                        _ => backoff.next(None),
                    };
                    tokio::time::sleep(delay).await;
                    // Where did the session get to?
                    match session.status(Some(total)).await {
                        Ok(s) => s,
                        Err(e) => {
                            let g = Failure::from_http(&e);
                            if !g.kind.is_transient() {
                                return Err(g);
                            }
                            continue;
                        }
                    }
                }
            };
            match status {
                UploadStatus::Ok(_) => return Ok(()),
                UploadStatus::NotStarted => offset = 0,
                UploadStatus::ResumeIncomplete(r) => offset = r.last_byte + 1,
            }
            if offset >= total {
                return Err(Failure::other(format!(
                    "resumable upload: the session reports all {total} bytes but no object"
                )));
            }
        }
    }

    /// Deletes one object; a missing one is not an error.
    async fn delete_one(&self, key: &str) -> Result<(), StoreError> {
        let req = DeleteObjectRequest {
            bucket: self.config.bucket.clone(),
            object: self.full_key(key),
            ..Default::default()
        };
        Policy::REQUEST
            .run(Op::Delete, key, || async {
                match self.client.delete_object(&req).await {
                    Ok(()) => Ok(()),
                    Err(e) => match Failure::from_http(&e) {
                        f if f.kind == Kind::NotFound => Ok(()),
                        f => Err(self.fail(f, Op::Delete, key)),
                    },
                }
            })
            .await
    }
}

/// One put call.
struct PutJob {
    full: String,
    body: Payload,
    size: u64,
    metadata: HashMap<String, String>,
    mode: PutMode,
}

impl PutJob {
    fn object(&self) -> Object {
        Object {
            name: self.full.clone(),
            content_type: Some("application/octet-stream".into()),
            metadata: Some(self.metadata.clone()),
            ..Default::default()
        }
    }
}

#[async_trait]
impl ReplicaClient for GcsClient {
    fn info(&self) -> &StoreInfo {
        &self.info
    }

    fn set_file_mode(&self, _mode: replica_core::file_mode::FileMode) {
        // Object stores keep no permission bits.
    }

    async fn put(&self, key: &Key, body: Payload, opts: &PutOptions) -> Result<(), StoreError> {
        let key = key.as_str();
        let size = body.size().await.map_err(|e| e.into_store(key))?;
        let mut metadata = HashMap::new();
        if let Some(ts) = opts.timestamp {
            metadata.insert(TIMESTAMP_METADATA.to_owned(), meta::format_timestamp(ts));
        }
        let job = PutJob {
            full: self.full_key(key),
            body,
            size,
            metadata,
            mode: opts.mode,
        };
        let resumable = opts.mode == PutMode::Overwrite && size > RESUMABLE_THRESHOLD;
        let res = if resumable {
            self.put_resumable(&job).await
        } else {
            self.put_multipart(&job).await
        };
        res.map_err(|f| self.fail(f, Op::Put, key))?;
        debug!(key, size, resumable, "put");
        Ok(())
    }

    async fn get(&self, key: &Key, range: Option<Range<u64>>) -> Result<ByteStream, StoreError> {
        let key = key.as_str();
        let gcs_range = match &range {
            None => GcsRange::default(),
            Some(r) if r.start > r.end => {
                return Err(self.fail(
                    Failure::other(format!("invalid byte range {}..{}", r.start, r.end)),
                    Op::Get,
                    key,
                ));
            }
            Some(r) if r.start == r.end => {
                // HTTP cannot ask for zero bytes; check that the object exists instead.
                self.get_meta(key)
                    .await
                    .map_err(|f| self.fail(f, Op::Get, key))?;
                return Ok(Box::pin(tokio::io::empty()));
            }
            // An end past any possible object (fake-gcs-server mis-parses a last byte
            // beyond i64) is the same as "to the end".
            Some(r) if r.end > i64::MAX as u64 => GcsRange(Some(r.start), None),
            Some(r) => GcsRange(Some(r.start), Some(r.end - 1)),
        };
        let req = GetObjectRequest {
            bucket: self.config.bucket.clone(),
            object: self.full_key(key),
            ..Default::default()
        };
        let res = self
            .client
            .download_streamed_object(&req, &gcs_range)
            .await
            .map_err(|e| Failure::from_http(&e));
        let stream = match res {
            Ok(s) => s,
            Err(f) if f.kind == Kind::RangeNotSatisfiable && range.is_some() => {
                return Ok(Box::pin(tokio::io::empty()));
            }
            Err(f) => return Err(self.fail(f, Op::Get, key)),
        };
        let reader = tokio_util::io::StreamReader::new(
            stream
                .map_err(|e| std::io::Error::other(Failure::from_http(&e).detail))
                .boxed(),
        );
        Ok(Box::pin(reader))
    }

    async fn head(&self, key: &Key) -> Result<ObjectInfo, StoreError> {
        let key = key.as_str();
        let obj = self
            .get_meta(key)
            .await
            .map_err(|f| self.fail(f, Op::Head, key))?;
        Ok(self.object_info(key, &obj))
    }

    async fn list(
        &self,
        prefix: &KeyPrefix,
        start_after: Option<&str>,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        let prefix = prefix.as_str();
        let err_key = if prefix.is_empty() {
            "<replica root>"
        } else {
            prefix
        };
        let full_prefix = self.full_key(prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let req = ListObjectsRequest {
                bucket: self.config.bucket.clone(),
                prefix: (!full_prefix.is_empty()).then(|| full_prefix.clone()),
                start_offset: start_after.map(|a| self.full_key(a)),
                page_token: token.clone(),
                max_results: Some(LIST_PAGE),
                ..Default::default()
            };
            // A page is one request of many: retried on its own.
            let page = Policy::REQUEST
                .run(Op::List, err_key, || async {
                    self.client
                        .list_objects(&req)
                        .await
                        .map_err(|e| self.fail(Failure::from_http(&e), Op::List, err_key))
                })
                .await?;
            for obj in page.items.iter().flatten() {
                let Some(rel) = obj.name.strip_prefix(self.root.as_str()) else {
                    continue;
                };
                if start_after.is_some_and(|a| rel <= a) {
                    continue;
                }
                out.push(self.object_info(rel, obj));
            }
            match page.next_page_token {
                Some(t) if !t.is_empty() => {
                    if token.as_deref() == Some(t.as_str()) {
                        return Err(self.fail(
                            Failure::other("the store returned the same page token twice"),
                            Op::List,
                            err_key,
                        ));
                    }
                    token = Some(t);
                }
                _ => break,
            }
        }
        out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// One DELETE per key, `DELETE_CONCURRENCY` at a time; 404 is success.
    async fn delete_many(&self, keys: &[Key]) -> Result<(), StoreError> {
        let mut tasks = tokio::task::JoinSet::new();
        let mut first_err: Option<StoreError> = None;
        let mut pending = keys.iter();
        loop {
            while tasks.len() < DELETE_CONCURRENCY {
                let Some(key) = pending.next() else { break };
                let (this, key) = (self.clone(), key.clone());
                tasks.spawn(async move { this.delete_one(&key).await });
            }
            match tasks.join_next().await {
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => {
                    first_err.get_or_insert(e);
                }
                Some(Err(join)) => {
                    if join.is_panic() {
                        std::panic::resume_unwind(join.into_panic());
                    }
                    first_err.get_or_insert(StoreError::Other {
                        op: Op::Delete,
                        key: keys.first().map(Key::to_string).unwrap_or_default(),
                        source: Box::new(GcsError(join.to_string())),
                    });
                }
                None => break,
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
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

/// Adds this backend's schemes (`gs://`, `gcs://`) to `registry`.
pub fn register(registry: &mut replica_core::registry::Registry) {
    registry.register("gs", open);
    registry.register("gcs", open);
}

fn open(url: String) -> replica_core::registry::OpenFuture {
    Box::pin(async move {
        let client = GcsClient::from_url(&url).await?;
        Ok(std::sync::Arc::new(client) as std::sync::Arc<dyn ReplicaClient>)
    })
}
