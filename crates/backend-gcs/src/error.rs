//! Mapping `gcloud-storage` failures onto [`StoreError`].
//!
//! The source of a [`StoreError`] is a plain [`GcsError`] string built from the HTTP
//! status and the service's message (or the transport error): the bearer token travels
//! in a header and is never part of either.

use gcloud_storage::http::Error as HttpError;
use replica_core::error::{Op, StoreError};

/// The detail of a failed GCS request.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GcsError(pub(crate) String);

/// What a failure means, independent of the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// 404.
    NotFound,
    /// 412: `ifGenerationMatch` failed.
    PreconditionFailed,
    /// 416: the range starts at or past the end.
    RangeNotSatisfiable,
    /// 401 / 403.
    Denied,
    /// 429 and 503: the service asks us to slow down.
    Throttled,
    /// 408, other 5xx, connection and timeout failures: worth retrying.
    Transient,
    Other,
}

impl Kind {
    pub(crate) fn is_transient(self) -> bool {
        matches!(self, Kind::Transient | Kind::Throttled)
    }
}

#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) kind: Kind,
    pub(crate) detail: String,
}

fn kind_of_status(code: u16) -> Kind {
    match code {
        404 => Kind::NotFound,
        412 => Kind::PreconditionFailed,
        416 => Kind::RangeNotSatisfiable,
        401 | 403 => Kind::Denied,
        429 | 503 => Kind::Throttled,
        408 | 500..=599 => Kind::Transient,
        _ => Kind::Other,
    }
}

impl Failure {
    pub(crate) fn other(detail: impl Into<String>) -> Self {
        Self {
            kind: Kind::Other,
            detail: detail.into(),
        }
    }

    pub(crate) fn transient(detail: impl Into<String>) -> Self {
        Self {
            kind: Kind::Transient,
            detail: detail.into(),
        }
    }

    pub(crate) fn from_http(e: &HttpError) -> Self {
        match e {
            HttpError::Response(r) => Self {
                kind: kind_of_status(r.code),
                detail: format!("HTTP {}: {}", r.code, r.message),
            },
            HttpError::HttpClient(err) | HttpError::RawResponse(err, _) => {
                let extra = match e {
                    HttpError::RawResponse(_, d) if !d.is_empty() => format!(" ({d})"),
                    _ => String::new(),
                };
                let detail = format!("{}{extra}", chain(err));
                match err.status() {
                    Some(s) => Self {
                        kind: kind_of_status(s.as_u16()),
                        detail: format!("HTTP {}: {detail}", s.as_u16()),
                    },
                    // No response: connect, timeout, an interrupted body.
                    None if err.is_decode() || err.is_builder() => Self::other(detail),
                    None => Self::transient(detail),
                }
            }
            HttpError::HttpMiddleware(err) => Self::transient(format!("{err:#}")),
            HttpError::TokenSource(err) => Self {
                kind: Kind::Denied,
                detail: format!("obtaining an access token: {err}"),
            },
            HttpError::InvalidRangeHeader(h) => Self::other(format!("invalid range header {h}")),
        }
    }

    pub(crate) fn into_store(self, op: Op, key: &str, bucket: &str) -> StoreError {
        let key = key.to_owned();
        match self.kind {
            Kind::NotFound if matches!(op, Op::Get | Op::Head) => StoreError::NotFound { key },
            Kind::PreconditionFailed if op == Op::Put => StoreError::AlreadyExists { key },
            Kind::Denied => StoreError::PermissionDenied {
                op,
                key,
                detail: format!("bucket {bucket}: {}", self.detail),
            },
            // gcloud-storage does not hand over response headers, so no Retry-After.
            Kind::Throttled => StoreError::Throttled {
                op,
                key,
                retry_after: None,
                source: Box::new(GcsError(format!("bucket {bucket}: {}", self.detail))),
            },
            Kind::Transient => StoreError::Transient {
                op,
                key,
                source: Box::new(GcsError(format!("bucket {bucket}: {}", self.detail))),
            },
            _ => StoreError::Other {
                op,
                key,
                source: Box::new(GcsError(format!("bucket {bucket}: {}", self.detail))),
            },
        }
    }
}

impl From<replica_core::client::PayloadError> for Failure {
    fn from(e: replica_core::client::PayloadError) -> Self {
        Self::other(replica_core::error::Chain(&e).to_string())
    }
}

/// An error and its sources, joined by `: `.
fn chain(err: &dyn std::error::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut src = err.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        src = s.source();
    }
    parts.join(": ")
}
