//! The `abs://` backend: a replica in an Azure Blob Storage container, on the official
//! `azure_storage_blob` 1.x SDK, laid out as Litestream 0.5 lays out its abs replicas
//! (`<prefix>/ltx/<level>/<min>-<max>.ltx`, creation time in the `litestreamtimestamp`
//! blob metadata), so either tool can read what the other wrote.
//!
//! # URL
//!
//! `abs://[account@]container[/prefix][?endpoint=http(s)://host[:port][/path]]`
//!
//! The account comes from the URL, else `AZURE_STORAGE_ACCOUNT`. `endpoint` is the blob
//! service address (Azurite: `http://127.0.0.1:10000/devstoreaccount1`; sovereign
//! clouds); without it `https://<account>.blob.core.windows.net`. Unknown or repeated
//! options and credentials in the URL are refused.
//!
//! # Credentials, first match wins
//!
//! 1. `AZURE_STORAGE_KEY`: the account key. The 1.x SDK cannot sign with it, so a
//!    short-lived account SAS ([`SAS_LIFETIME`]) is minted locally and re-minted before
//!    it expires; the key itself never leaves the process.
//! 2. `AZURE_STORAGE_SAS_TOKEN`: a SAS token (with or without the leading `?`).
//! 3. Entra ID: workload identity (when `AZURE_FEDERATED_TOKEN_FILE` is set), managed
//!    identity, then the developer tools (Azure CLI, azd). Entra ID needs https.
//!
//! # Writes
//!
//! Objects up to [`SINGLE_PUT_MAX`] go up in one Put Blob; larger ones as staged
//! blocks (read from the payload file block by block) and a Put Block List. Create-only
//! puts send `If-None-Match: *` (on the block list commit for staged uploads); Azure
//! answers 409 BlobAlreadyExists, or 412, when the blob exists: `AlreadyExists`, and
//! the caller decides by content whether the blob there is its own (a resend after a
//! lost response).
//!
//! The SDK's own retries are off: this client translates (429 and 503 ServerBusy are
//! `Throttled`, with the `Retry-After` the service sent; timeouts and other 5xx are
//! `Transient`), and `replica_core::retry` retries every backend the same way. Staged
//! blocks are idempotent, so each is retried on its own rather than the whole upload.

mod cas;
mod config;
pub mod sas;

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind;
use azure_core::http::headers::RETRY_AFTER;
use azure_core::http::{ClientOptions, RequestContent, RetryOptions, StatusCode, Url};
use azure_storage_blob::models::{
    BlobClientDownloadOptions, BlobClientGetPropertiesResultHeaders,
    BlobContainerClientListBlobsOptions, BlockBlobClientCommitBlockListOptions,
    BlockBlobClientUploadOptions, BlockLookupList, ListBlobsIncludeItem,
};
use azure_storage_blob::{BlobContainerClient, BlobContainerClientOptions};
use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use replica_core::client::{
    ByteStream, Capabilities, ObjectInfo, Payload, PutMode, PutOptions, ReplicaClient, StoreInfo,
    Version, Versioned, part_size,
};
use replica_core::error::{Chain, Op, StoreError};
use replica_core::key::{Key, KeyPrefix};
use replica_core::meta;
use replica_core::retry::{Policy, parse_retry_after};
use time::OffsetDateTime;
use tokio::io::AsyncReadExt as _;
use tracing::debug;

pub use crate::config::{AbsConfig, KNOWN_OPTIONS};
pub use crate::sas::AccountKey;

/// Objects larger than this are uploaded as staged blocks.
pub const SINGLE_PUT_MAX: u64 = 8 * 1024 * 1024;
/// The smallest block size; grown for huge objects to stay within 50,000 blocks.
pub const MIN_BLOCK_SIZE: u64 = 8 * 1024 * 1024;
const MAX_BLOCKS: u64 = 50_000;
const BLOCK_CONCURRENCY: usize = 4;
const DELETE_CONCURRENCY: usize = 16;
/// How long a minted account SAS is valid; it is re-minted when less than a quarter
/// of this remains.
pub const SAS_LIFETIME: time::Duration = time::Duration::hours(1);

/// Blob metadata holding the LTX creation time, as Litestream writes and reads it.
pub const TIMESTAMP_METADATA: &str = meta::TIMESTAMP_AZURE;

/// How requests are authorised.
#[derive(Clone)]
pub enum Credentials {
    /// An account key: requests carry a locally minted account SAS.
    AccountKey(AccountKey),
    /// A SAS token, with or without the leading `?`.
    Sas(String),
    /// Entra ID through the chain described in the crate docs.
    EntraId,
    /// A caller-supplied Entra ID credential.
    Token(Arc<dyn TokenCredential>),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Credentials::AccountKey(_) => "AccountKey(<redacted>)",
            Credentials::Sas(_) => "Sas(<redacted>)",
            Credentials::EntraId => "EntraId",
            Credentials::Token(_) => "Token",
        })
    }
}

impl Credentials {
    /// From the environment (see the crate docs).
    pub fn from_env() -> Result<Self, String> {
        if let Some(key) = std::env::var("AZURE_STORAGE_KEY")
            .ok()
            .filter(|k| !k.is_empty())
        {
            return Ok(Credentials::AccountKey(
                AccountKey::from_base64(&key).map_err(|e| format!("AZURE_STORAGE_KEY: {e}"))?,
            ));
        }
        if let Some(sas) = std::env::var("AZURE_STORAGE_SAS_TOKEN")
            .ok()
            .filter(|k| !k.is_empty())
        {
            return Ok(Credentials::Sas(sas));
        }
        Ok(Credentials::EntraId)
    }
}

/// The error type behind [`StoreError::Other`] and [`StoreError::Transient`] sources.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AbsError(pub String);

/// A replica rooted at `abs://container/prefix`.
pub struct AbsClient {
    config: AbsConfig,
    /// `prefix/`, or empty for the container root.
    root: String,
    info: StoreInfo,
    auth: Auth,
}

enum Auth {
    /// A fixed client (SAS token or Entra ID).
    Fixed(Arc<BlobContainerClient>),
    /// Minted SAS, renewed before expiry.
    Minted {
        account: String,
        key: AccountKey,
        container_url: Url,
        current: Mutex<Option<(Arc<BlobContainerClient>, OffsetDateTime)>>,
    },
}

impl fmt::Debug for AbsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AbsClient")
            .field("url", &self.info.redacted_url)
            .finish()
    }
}

fn sdk_options() -> BlobContainerClientOptions {
    BlobContainerClientOptions {
        client_options: ClientOptions {
            retry: RetryOptions::none(),
            ..ClientOptions::default()
        },
        ..BlobContainerClientOptions::default()
    }
}

fn container_url(config: &AbsConfig) -> Result<Url, StoreError> {
    let service = config.service_url()?;
    let mut u = Url::parse(&service).map_err(|e| StoreError::InvalidUrl {
        url: config.to_url_string(),
        reason: format!("bad endpoint: {e}"),
    })?;
    match u.path_segments_mut() {
        Ok(mut s) => {
            s.pop_if_empty().push(&config.container);
        }
        Err(()) => {
            return Err(StoreError::InvalidUrl {
                url: config.to_url_string(),
                reason: "the endpoint cannot be a base URL".into(),
            });
        }
    }
    Ok(u)
}

impl AbsClient {
    /// Parses `url` (see the crate docs), takes the credentials from the environment
    /// and builds the client. No request is sent.
    pub async fn from_url(url: &str) -> Result<Self, StoreError> {
        let config = AbsConfig::parse(url)?;
        let creds = Credentials::from_env().map_err(|reason| StoreError::InvalidUrl {
            url: config.to_url_string(),
            reason,
        })?;
        Self::new(config, creds)
    }

    /// A client for `config` with explicit credentials.
    pub fn new(config: AbsConfig, creds: Credentials) -> Result<Self, StoreError> {
        let url = config.to_url_string();
        let bad = |reason: String| StoreError::InvalidUrl {
            url: url.clone(),
            reason,
        };
        let container_url = container_url(&config)?;
        let auth = match creds {
            Credentials::AccountKey(key) => {
                let Some(account) = config.account.clone() else {
                    return Err(bad("an account key needs the account name: use \
                         abs://account@container/path or set AZURE_STORAGE_ACCOUNT"
                        .into()));
                };
                Auth::Minted {
                    account,
                    key,
                    container_url,
                    current: Mutex::new(None),
                }
            }
            Credentials::Sas(token) => {
                let mut u = container_url;
                u.set_query(Some(token.trim().trim_start_matches('?')));
                let c = BlobContainerClient::new(u, None, Some(sdk_options()))
                    .map_err(|e| bad(describe(&e)))?;
                Auth::Fixed(Arc::new(c))
            }
            Credentials::EntraId => {
                let cred: Arc<dyn TokenCredential> = Arc::new(ChainCredential::new());
                let c = BlobContainerClient::new(container_url, Some(cred), Some(sdk_options()))
                    .map_err(|e| bad(format!("Entra ID: {}", describe(&e))))?;
                Auth::Fixed(Arc::new(c))
            }
            Credentials::Token(cred) => {
                let c = BlobContainerClient::new(container_url, Some(cred), Some(sdk_options()))
                    .map_err(|e| bad(format!("Entra ID: {}", describe(&e))))?;
                Auth::Fixed(Arc::new(c))
            }
        };
        let root = if config.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", config.prefix)
        };
        let info = StoreInfo::new(
            "abs",
            url,
            Capabilities {
                create_only: true,
                ranged_get: true,
                // Listing includes each blob's metadata.
                list_has_ltx_time: true,
            },
        );
        Ok(Self {
            config,
            root,
            info,
            auth,
        })
    }

    pub fn config(&self) -> &AbsConfig {
        &self.config
    }

    /// The SDK container client (for tests and administration: creating containers).
    pub fn container_client(&self) -> Result<Arc<BlobContainerClient>, StoreError> {
        match &self.auth {
            Auth::Fixed(c) => Ok(Arc::clone(c)),
            Auth::Minted {
                account,
                key,
                container_url,
                current,
            } => {
                let now = OffsetDateTime::now_utc();
                let mut guard = current.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((c, exp)) = guard.as_ref()
                    && *exp - now > SAS_LIFETIME / 4
                {
                    return Ok(c.clone());
                }
                // Start a little in the past to tolerate clock skew.
                let start = now - time::Duration::minutes(5);
                let expiry = now + SAS_LIFETIME;
                let https_only = container_url.scheme() == "https";
                let mut u = container_url.clone();
                u.query_pairs_mut()
                    .extend_pairs(sas::account_sas(account, key, start, expiry, https_only));
                let c = BlobContainerClient::new(u, None, Some(sdk_options())).map_err(|e| {
                    StoreError::InvalidUrl {
                        url: self.info.redacted_url.clone(),
                        reason: describe(&e),
                    }
                })?;
                let c = Arc::new(c);
                *guard = Some((Arc::clone(&c), expiry));
                Ok(c)
            }
        }
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.root)
    }

    async fn head_info(
        &self,
        key: &str,
        op: Op,
    ) -> Result<(ObjectInfo, HashMap<String, String>), StoreError> {
        let c = self.container_client()?;
        let rsp = c
            .blob_client(&self.full_key(key))
            .get_properties(None)
            .await
            .map_err(|e| map_err(&e, op, key))?;
        let size = rsp.content_length().ok().flatten().unwrap_or(0);
        let meta = rsp.metadata().unwrap_or_default();
        Ok((
            ObjectInfo {
                key: key.to_owned(),
                size,
                last_modified: rsp.last_modified().ok().flatten().map(SystemTime::from),
                ltx_time: meta
                    .get(TIMESTAMP_METADATA)
                    .and_then(|s| meta::parse_timestamp(s)),
            },
            meta,
        ))
    }

    async fn put_single(
        &self,
        c: &Arc<BlobContainerClient>,
        full: &str,
        data: Bytes,
        metadata: HashMap<String, String>,
        mode: PutMode,
    ) -> Result<(), azure_core::Error> {
        let opts = BlockBlobClientUploadOptions {
            metadata: Some(metadata),
            if_none_match: (mode == PutMode::CreateOnly).then(|| "*".into()),
            partition_size: std::num::NonZero::new(SINGLE_PUT_MAX.max(data.len() as u64) + 1),
            ..Default::default()
        };
        c.blob_client(full)
            .block_blob_client()
            .upload(data.into(), Some(opts))
            .await
            .map(|_| ())
    }

    // The parts of one put, passed on from its only caller.
    #[allow(clippy::too_many_arguments)]
    async fn put_blocks(
        &self,
        c: &Arc<BlobContainerClient>,
        full: &str,
        body: &Payload,
        size: u64,
        metadata: HashMap<String, String>,
        mode: PutMode,
        key: &str,
    ) -> Result<(), Failure> {
        // Same-length block ids, unique to this put.
        let put_id = format!("{:032x}", rand::random::<u128>());
        let block_size = part_size(size, MIN_BLOCK_SIZE, MAX_BLOCKS);
        let count = size.div_ceil(block_size);
        let mut ids = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        let mut tasks = tokio::task::JoinSet::new();
        let mut next = 0u64;
        while next < count || !tasks.is_empty() {
            while next < count && tasks.len() < BLOCK_CONCURRENCY {
                let offset = next * block_size;
                let len = block_size.min(size - offset);
                let id = format!("{put_id}-{next:08}").into_bytes();
                ids.push(id.clone());
                let body = body.clone();
                let c = Arc::clone(c);
                let (full, key) = (full.to_owned(), key.to_owned());
                tasks.spawn(async move {
                    let data = body
                        .read_range(offset, len)
                        .await
                        .map_err(|e| Failure::Store(e.into_store(&key)))?;
                    let block = c.blob_client(&full).block_blob_client();
                    Policy::REQUEST
                        .run(Op::Put, &key, || async {
                            block
                                .stage_block(&id, len, data.clone().into(), None)
                                .await
                                .map(|_| ())
                                .map_err(|e| map_err(&e, Op::Put, &key))
                        })
                        .await
                        .map_err(Failure::Store)
                });
                next += 1;
            }
            match tasks.join_next().await {
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(f))) => return Err(f),
                Some(Err(join)) => {
                    if join.is_panic() {
                        std::panic::resume_unwind(join.into_panic());
                    }
                    return Err(Failure::Local(join.to_string()));
                }
                None => break,
            }
        }
        let list = BlockLookupList {
            latest: Some(ids),
            ..Default::default()
        };
        let content: RequestContent<BlockLookupList, azure_core::http::XmlFormat> = list
            .try_into()
            .map_err(|e: azure_core::Error| Failure::Local(describe(&e)))?;
        let opts = BlockBlobClientCommitBlockListOptions {
            metadata: Some(metadata),
            if_none_match: (mode == PutMode::CreateOnly).then(|| "*".into()),
            ..Default::default()
        };
        c.blob_client(full)
            .block_blob_client()
            .commit_block_list(content, Some(opts))
            .await
            .map(|_| ())
            .map_err(Failure::Sdk)
    }
}

/// A put failure: from the service, or reading the payload.
enum Failure {
    Sdk(azure_core::Error),
    Local(String),
    /// Already translated (a staged block that failed after its retries).
    Store(StoreError),
}

/// Removes SAS signatures (`sig=…`) from a message, in case an SDK error quotes a URL.
/// An SDK error with its causes, `error: cause: …`, with SAS signatures redacted.
/// azure_core's error that wraps another error shows that error's message and also
/// returns it as its source: it is printed once, as that error.
fn describe(e: &azure_core::Error) -> String {
    use std::error::Error as _;
    let top: &(dyn std::error::Error + 'static) = match e.source() {
        Some(inner) if inner.to_string() == e.to_string() => inner,
        _ => e,
    };
    redact(&Chain(top).to_string())
}

fn redact(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("sig=") {
        out.push_str(&rest[..i + 4]);
        out.push_str("REDACTED");
        let tail = &rest[i + 4..];
        let end = tail
            .find(|c: char| c == '&' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn http_parts(e: &azure_core::Error) -> Option<(StatusCode, Option<&str>)> {
    match e.kind() {
        ErrorKind::HttpResponse {
            status, error_code, ..
        } => Some((*status, error_code.as_deref())),
        _ => None,
    }
}

/// Maps an SDK error for `op` on `key` (never quoting credentials).
fn map_err(e: &azure_core::Error, op: Op, key: &str) -> StoreError {
    let key_s = key.to_owned();
    let other = |detail: String| StoreError::Other {
        op,
        key: key_s.clone(),
        source: Box::new(AbsError(detail)),
    };
    let transient = |detail: String| StoreError::Transient {
        op,
        key: key_s.clone(),
        source: Box::new(AbsError(detail)),
    };
    match e.kind() {
        ErrorKind::HttpResponse {
            status,
            error_code,
            raw_response,
        } => {
            let code = error_code.as_deref().unwrap_or("");
            let detail = if code.is_empty() {
                format!("HTTP {}", u16::from(*status))
            } else {
                format!("HTTP {} {code}", u16::from(*status))
            };
            match u16::from(*status) {
                404 if code == "ContainerNotFound" => other(format!(
                    "{detail}: the container does not exist (create it first)"
                )),
                404 => StoreError::NotFound { key: key_s.clone() },
                401 | 403 => StoreError::PermissionDenied {
                    op,
                    key: key_s.clone(),
                    detail,
                },
                409 if code == "BlobAlreadyExists" => {
                    StoreError::AlreadyExists { key: key_s.clone() }
                }
                412 if op == Op::Put => StoreError::AlreadyExists { key: key_s.clone() },
                429 | 503 => StoreError::Throttled {
                    op,
                    key: key_s.clone(),
                    retry_after: raw_response
                        .as_ref()
                        .and_then(|r| r.headers().get_optional_str(&RETRY_AFTER))
                        .and_then(parse_retry_after),
                    source: Box::new(AbsError(detail)),
                },
                408 | 500..=599 => transient(detail),
                _ => other(detail),
            }
        }
        ErrorKind::Io | ErrorKind::Connection => transient(describe(e)),
        ErrorKind::Credential => StoreError::PermissionDenied {
            op,
            key: key_s.clone(),
            detail: format!("Entra ID credential: {}", describe(e)),
        },
        _ => other(describe(e)),
    }
}

#[async_trait]
impl ReplicaClient for AbsClient {
    fn info(&self) -> &StoreInfo {
        &self.info
    }

    fn set_file_mode(&self, _mode: replica_core::file_mode::FileMode) {
        // Object stores keep no permission bits.
    }

    async fn put(&self, key: &Key, body: Payload, opts: &PutOptions) -> Result<(), StoreError> {
        let key = key.as_str();
        let local = |d: String| StoreError::Other {
            op: Op::Put,
            key: key.to_owned(),
            source: Box::new(AbsError(d)),
        };
        let size = body.size().await.map_err(|e| e.into_store(key))?;
        let mut metadata = HashMap::new();
        if let Some(t) = opts.timestamp {
            metadata.insert(TIMESTAMP_METADATA.to_owned(), meta::format_timestamp(t));
        }
        let c = self.container_client()?;
        let full = self.full_key(key);
        let blocks = size > SINGLE_PUT_MAX;
        let result = if blocks {
            self.put_blocks(&c, &full, &body, size, metadata, opts.mode, key)
                .await
        } else {
            let data = body
                .read_range(0, size)
                .await
                .map_err(|e| e.into_store(key))?;
            self.put_single(&c, &full, data, metadata, opts.mode)
                .await
                .map_err(Failure::Sdk)
        };
        match result {
            Ok(()) => {}
            Err(Failure::Local(d)) => return Err(local(d)),
            Err(Failure::Store(e)) => return Err(e),
            Err(Failure::Sdk(e)) => return Err(map_err(&e, Op::Put, key)),
        }
        debug!(key, size, blocks, "put");
        Ok(())
    }

    async fn get(&self, key: &Key, range: Option<Range<u64>>) -> Result<ByteStream, StoreError> {
        let key = key.as_str();
        if let Some(r) = &range {
            if r.start > r.end {
                return Err(StoreError::Other {
                    op: Op::Get,
                    key: key.to_owned(),
                    source: Box::new(AbsError(format!(
                        "invalid byte range {}..{}",
                        r.start, r.end
                    ))),
                });
            }
            if r.start == r.end {
                self.head_info(key, Op::Get).await?;
                return Ok(Box::pin(tokio::io::empty()));
            }
        }
        let c = self.container_client()?;
        let opts = BlobClientDownloadOptions {
            range: range.clone().map(Into::into),
            ..Default::default()
        };
        let rsp = match c
            .blob_client(&self.full_key(key))
            .download(Some(opts))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                if let Some((s, _)) = http_parts(&e)
                    && u16::from(s) == 416
                {
                    // The range starts at or past the end: nothing to read, if the
                    // object exists.
                    self.head_info(key, Op::Get).await?;
                    return Ok(Box::pin(tokio::io::empty()));
                }
                return Err(map_err(&e, Op::Get, key));
            }
        };
        // Whoever reads the body names the key when it reports the error.
        let stream = rsp.body.map_err(move |e| {
            let kind = if matches!(e.kind(), ErrorKind::Io | ErrorKind::Connection) {
                std::io::ErrorKind::ConnectionAborted
            } else {
                std::io::ErrorKind::Other
            };
            std::io::Error::new(kind, describe(&e))
        });
        let reader = tokio_util::io::StreamReader::new(stream);
        match range {
            // The service may return more than asked if it ignored the range end.
            Some(r) => Ok(Box::pin(reader.take(r.end - r.start))),
            None => Ok(Box::pin(reader)),
        }
    }

    async fn head(&self, key: &Key) -> Result<ObjectInfo, StoreError> {
        self.head_info(key, Op::Head).await.map(|(i, _)| i)
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
        let c = self.container_client()?;
        let full_prefix = self.full_key(prefix);
        let opts = BlobContainerClientListBlobsOptions {
            prefix: (!full_prefix.is_empty()).then(|| full_prefix.clone()),
            include: Some(vec![ListBlobsIncludeItem::Metadata]),
            ..Default::default()
        };
        let pager = c
            .list_blobs(Some(opts))
            .map_err(|e| map_err(&e, Op::List, err_key))?;
        let mut pages = pager.into_pages();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page
                .map_err(|e| map_err(&e, Op::List, err_key))?
                .into_model()
                .map_err(|e| map_err(&e, Op::List, err_key))?;
            for item in page.blob_items {
                let Some(name) = item.name.as_deref() else {
                    continue;
                };
                let Some(rel) = name.strip_prefix(self.root.as_str()) else {
                    continue;
                };
                if start_after.is_some_and(|a| rel <= a) {
                    continue;
                }
                let props = item.properties.as_ref();
                let ltx_time = item
                    .metadata
                    .as_ref()
                    .and_then(|m| m.values.as_ref())
                    .and_then(|v| v.get(TIMESTAMP_METADATA))
                    .and_then(|s| meta::parse_timestamp(s));
                out.push(ObjectInfo {
                    key: rel.to_owned(),
                    size: props.and_then(|p| p.content_length).unwrap_or(0),
                    last_modified: props.and_then(|p| p.last_modified).map(SystemTime::from),
                    ltx_time,
                });
            }
        }
        out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let c = self.container_client()?;
        let results: Vec<Result<(), StoreError>> = futures_util::stream::iter(keys.iter().cloned())
            .map(|key| {
                let blob = c.blob_client(&self.full_key(&key));
                // One request of many: retried on its own.
                async move {
                    Policy::REQUEST
                        .run(Op::Delete, &key, || async {
                            match blob.delete(None).await {
                                Ok(_) => Ok(()),
                                Err(e) => match map_err(&e, Op::Delete, &key) {
                                    StoreError::NotFound { .. } => Ok(()),
                                    other => Err(other),
                                },
                            }
                        })
                        .await
                }
            })
            .buffer_unordered(DELETE_CONCURRENCY)
            .collect()
            .await;
        let failed: Vec<StoreError> = results.into_iter().filter_map(Result::err).collect();
        let n = failed.len();
        match failed.into_iter().next() {
            None => Ok(()),
            Some(first) if n == 1 => Err(first),
            Some(first) => {
                debug!(failed = n, "delete_many: several keys failed");
                Err(first)
            }
        }
    }

    async fn get_versioned(&self, key: &Key) -> Result<Versioned, StoreError> {
        self.get_versioned_blob(key).await
    }

    async fn put_if(
        &self,
        key: &Key,
        body: Bytes,
        expected: Option<&Version>,
    ) -> Result<Version, StoreError> {
        self.put_blob_if(key, body, expected).await
    }
}

/// Entra ID: workload identity (when configured), managed identity, developer tools;
/// the first that yields a token is used from then on.
#[derive(Debug)]
struct ChainCredential {
    sources: Vec<Arc<dyn TokenCredential>>,
    chosen: Mutex<Option<usize>>,
}

impl ChainCredential {
    fn new() -> Self {
        let mut sources: Vec<Arc<dyn TokenCredential>> = Vec::new();
        if std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").is_some()
            && let Ok(c) = azure_identity::WorkloadIdentityCredential::new(None)
        {
            sources.push(c);
        }
        if let Ok(c) = azure_identity::ManagedIdentityCredential::new(None) {
            sources.push(c);
        }
        if let Ok(c) = azure_identity::DeveloperToolsCredential::new(None) {
            sources.push(c);
        }
        Self {
            sources,
            chosen: Mutex::new(None),
        }
    }
}

#[async_trait]
impl TokenCredential for ChainCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let chosen = *self.chosen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = chosen
            && let Some(src) = self.sources.get(i)
        {
            return src.get_token(scopes, options).await;
        }
        let mut errors = Vec::new();
        for (i, src) in self.sources.iter().enumerate() {
            match src.get_token(scopes, options.clone()).await {
                Ok(t) => {
                    *self.chosen.lock().unwrap_or_else(|p| p.into_inner()) = Some(i);
                    return Ok(t);
                }
                Err(e) => errors.push(describe(&e)),
            }
        }
        Err(azure_core::Error::with_message(
            ErrorKind::Credential,
            format!(
                "no Entra ID credential available (workload identity, managed identity, \
                 Azure CLI, azd), and neither AZURE_STORAGE_KEY nor AZURE_STORAGE_SAS_TOKEN \
                 is set: {}",
                errors.join("; ")
            ),
        ))
    }
}

/// Adds this backend's schemes (`abs://`) to `registry`.
pub fn register(registry: &mut replica_core::registry::Registry) {
    registry.register("abs", open);
}

fn open(url: String) -> replica_core::registry::OpenFuture {
    Box::pin(async move {
        let client = AbsClient::from_url(&url).await?;
        Ok(std::sync::Arc::new(client) as std::sync::Arc<dyn ReplicaClient>)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_signatures() {
        assert_eq!(
            redact("GET http://h/c?sv=1&sig=abc%2F%3D&se=2 failed"),
            "GET http://h/c?sv=1&sig=REDACTED&se=2 failed"
        );
        assert_eq!(redact("no secrets"), "no secrets");
    }
}
