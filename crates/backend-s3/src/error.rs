//! Mapping AWS SDK failures onto [`StoreError`].
//!
//! Messages are built from the S3 error code and message, the HTTP status and the
//! request id, or from the SDK's error chain for failures without a response. None of
//! these carries credentials: signing happens inside the SDK and the secret key is never
//! part of a request, a response or an SDK error. We still never box the SDK error
//! itself as a source, because its `Debug` output includes whole raw responses; the
//! source is a plain [`S3Error`] string instead.

use std::error::Error as StdError;
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use replica_core::error::{Op, StoreError};
use replica_core::retry::parse_retry_after;

/// The detail of a failed S3 request, as the source of a [`StoreError`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct S3Error(pub(crate) String);

/// What a failure means, independent of the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// 404 / NoSuchKey / NotFound.
    NoSuchKey,
    NoSuchBucket,
    /// The multipart upload id is unknown (aborted, or already completed).
    NoSuchUpload,
    /// 412: a conditional write's precondition failed (`If-None-Match: *` on an
    /// existing key).
    PreconditionFailed,
    /// 409 ConditionalRequestConflict: a concurrent conditional write to the key.
    ConditionalConflict,
    /// 416: the range starts past the end of the object.
    InvalidRange,
    Denied,
    /// 429, `SlowDown` and the like: transient, and the store may say how long to
    /// wait (`Retry-After`).
    Throttled,
    Transient,
    Other,
}

#[derive(Debug)]
pub(crate) struct Failure {
    pub kind: Kind,
    pub detail: String,
    /// The response's `Retry-After`, when it had one.
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn new(kind: Kind, detail: impl Into<String>) -> Self {
        Failure {
            kind,
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn other(detail: impl Into<String>) -> Self {
        Self::new(Kind::Other, detail)
    }

    /// Classifies an SDK error.
    pub fn from_sdk<E>(err: &SdkError<E>) -> Self
    where
        E: ProvideErrorMetadata + StdError + 'static,
    {
        match err {
            SdkError::ServiceError(ctx) => {
                let e = ctx.err();
                let status = err.raw_response().map(status_of);
                let mut f = service_failure(
                    e.code(),
                    e.message(),
                    e.meta().extra("aws_request_id"),
                    status,
                );
                f.retry_after = err
                    .raw_response()
                    .and_then(|r| r.headers().get("retry-after"))
                    .and_then(parse_retry_after);
                f
            }
            SdkError::ResponseError(_) => {
                let status = err.raw_response().map(status_of);
                let kind = match status {
                    Some(429 | 503) => Kind::Throttled,
                    Some(s) if s >= 500 => Kind::Transient,
                    _ if chain_has_io_error(err) => Kind::Transient,
                    _ => Kind::Other,
                };
                Failure::new(kind, chain_message(err))
            }
            SdkError::TimeoutError(_) => Failure::new(Kind::Transient, chain_message(err)),
            SdkError::DispatchFailure(_) if credentials_kind(err) == Some(Kind::Denied) => {
                no_credentials(err)
            }
            SdkError::DispatchFailure(d) => {
                let kind = if let Some(kind) = credentials_kind(err) {
                    kind
                } else if d.is_user() {
                    Kind::Other
                } else {
                    Kind::Transient
                };
                Failure::new(kind, chain_message(err))
            }
            _ if credentials_kind(err) == Some(Kind::Denied) => no_credentials(err),
            // Construction failures (and any future variant) are bugs or bad input, not
            // worth retrying.
            _ => Failure::new(
                credentials_kind(err).unwrap_or(Kind::Other),
                chain_message(err),
            ),
        }
    }

    /// The [`StoreError`] for this failure of `op` on `key` in `bucket`.
    pub fn into_store(self, op: Op, key: &str, bucket: &str) -> StoreError {
        let key_owned = key.to_owned();
        let source = |detail: String| Box::new(S3Error(detail));
        match self.kind {
            Kind::NoSuchKey => StoreError::NotFound { key: key_owned },
            Kind::NoSuchBucket => StoreError::NotFound {
                key: format!(
                    "{} (bucket {bucket:?} does not exist; create it or fix the replica URL)",
                    if key.is_empty() {
                        "<replica root>"
                    } else {
                        key
                    }
                ),
            },
            Kind::PreconditionFailed if op == Op::Put => {
                StoreError::AlreadyExists { key: key_owned }
            }
            // Another conditional write to the key is in flight; whichever way it
            // ends, asking again gets a definite answer.
            Kind::ConditionalConflict => StoreError::Transient {
                op,
                key: key_owned,
                source: source(self.detail),
            },
            Kind::Denied => StoreError::PermissionDenied {
                op,
                key: key_owned,
                detail: self.detail,
            },
            Kind::Throttled => StoreError::Throttled {
                op,
                key: key_owned,
                retry_after: self.retry_after,
                source: source(self.detail),
            },
            Kind::Transient => StoreError::Transient {
                op,
                key: key_owned,
                source: source(self.detail),
            },
            _ => StoreError::Other {
                op,
                key: key_owned,
                source: source(self.detail),
            },
        }
    }
}

/// What to do when the credential chain found nothing. The SDK's own account (every
/// provider's failure, an instance-metadata response among them) is kilobytes long;
/// it goes to the debug log, the error says what was tried and what to set.
fn no_credentials<E>(err: &SdkError<E>) -> Failure
where
    E: StdError + 'static,
{
    tracing::debug!(error = %chain_message(err), "AWS credential chain");
    Failure::new(
        Kind::Denied,
        "no AWS credentials found (tried AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, \
         AWS_PROFILE and ~/.aws/config and credentials, web identity, the container \
         endpoint and instance metadata); set AWS_ACCESS_KEY_ID and \
         AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with a role (-v shows each \
         provider's answer)",
    )
}

fn status_of(r: &HttpResponse) -> u16 {
    r.status().as_u16()
}

/// Maps an S3 error response by code first (codes are more specific than statuses),
/// then by status.
pub(crate) fn service_failure(
    code: Option<&str>,
    message: Option<&str>,
    request_id: Option<&str>,
    status: Option<u16>,
) -> Failure {
    let kind = match (code, status) {
        (Some("NoSuchBucket"), _) => Kind::NoSuchBucket,
        (Some("NoSuchKey" | "NotFound"), _) => Kind::NoSuchKey,
        (Some("NoSuchUpload"), _) => Kind::NoSuchUpload,
        (Some("PreconditionFailed"), _) | (_, Some(412)) => Kind::PreconditionFailed,
        (Some("ConditionalRequestConflict"), _) => Kind::ConditionalConflict,
        (Some("InvalidRange"), _) | (_, Some(416)) => Kind::InvalidRange,
        (Some("RequestTimeTooSkewed"), _) => Kind::Other,
        (
            Some(
                "AccessDenied"
                | "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "AllAccessDisabled"
                | "AccountProblem"
                | "InvalidToken"
                | "ExpiredToken"
                | "TokenRefreshRequired"
                | "InvalidSecurity",
            ),
            _,
        )
        | (_, Some(401 | 403)) => Kind::Denied,
        (
            Some(
                "SlowDown"
                | "Throttling"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "TooManyRequestsException",
            ),
            _,
        )
        | (_, Some(429)) => Kind::Throttled,
        (
            Some("RequestTimeout" | "InternalError" | "ServiceUnavailable" | "OperationAborted"),
            _,
        )
        | (_, Some(408 | 500..=599)) => Kind::Transient,
        (_, Some(404)) => Kind::NoSuchKey,
        _ => Kind::Other,
    };
    let mut detail = String::new();
    detail.push_str(code.unwrap_or("no error code"));
    if let Some(m) = message.filter(|m| !m.is_empty()) {
        detail.push_str(": ");
        detail.push_str(m);
    }
    let mut extras = Vec::new();
    if let Some(s) = status.filter(|s| *s != 0) {
        extras.push(format!("HTTP {s}"));
    }
    if let Some(id) = request_id {
        extras.push(format!("request id {id}"));
    }
    if !extras.is_empty() {
        detail.push_str(&format!(" ({})", extras.join(", ")));
    }
    Failure::new(kind, detail)
}

/// The SDK error and its sources, on one line (`dispatch failure: io error: …`).
/// Unlike the SDK's `DisplayErrorContext` this leaves out `Debug` renderings, which
/// for response errors would include the whole raw response.
fn chain_message<E>(err: &SdkError<E>) -> String
where
    E: StdError + 'static,
{
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        // One line: credential-chain errors list their attempts on separate lines.
        let text = e
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        // Some errors repeat their source's message in their own.
        if !text.is_empty() && !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = e.source();
    }
    parts.join(": ")
}

fn chain_has_io_error(err: &(dyn StdError + 'static)) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<std::io::Error>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// A failure to obtain credentials surfaces as a dispatch (or construction) failure
/// whose source is the SDK's `CredentialsError`; that type is not re-exported by the
/// S3 crate, so it is recognised by its message, which is stable and documented in
/// aws-credential-types ("the credential provider was not enabled", "failed to load
/// credentials …", "an error occurred while loading credentials", "credentials provider
/// timed out", "the credentials provider was not properly configured").
fn credentials_kind<E>(err: &SdkError<E>) -> Option<Kind>
where
    E: StdError + 'static,
{
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        let msg = e.to_string();
        if msg.contains("credentials provider timed out") {
            return Some(Kind::Transient);
        }
        if msg.contains("no credentials")
            || msg.contains("failed to load credentials")
            || msg.contains("credentials provider was not properly configured")
            || msg.contains("credential provider was not enabled")
        {
            return Some(Kind::Denied);
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(code: Option<&str>, status: Option<u16>) -> Kind {
        service_failure(code, None, None, status).kind
    }

    #[test]
    fn codes_and_statuses_map_to_kinds() {
        assert_eq!(kind(Some("NoSuchKey"), Some(404)), Kind::NoSuchKey);
        assert_eq!(kind(Some("NotFound"), Some(404)), Kind::NoSuchKey);
        assert_eq!(kind(None, Some(404)), Kind::NoSuchKey);
        assert_eq!(kind(Some("NoSuchBucket"), Some(404)), Kind::NoSuchBucket);
        assert_eq!(kind(Some("NoSuchUpload"), Some(404)), Kind::NoSuchUpload);
        assert_eq!(
            kind(Some("PreconditionFailed"), Some(412)),
            Kind::PreconditionFailed
        );
        assert_eq!(kind(None, Some(412)), Kind::PreconditionFailed);
        assert_eq!(
            kind(Some("ConditionalRequestConflict"), Some(409)),
            Kind::ConditionalConflict
        );
        assert_eq!(kind(Some("InvalidRange"), Some(416)), Kind::InvalidRange);
        for code in [
            "AccessDenied",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
        ] {
            assert_eq!(kind(Some(code), Some(403)), Kind::Denied, "{code}");
        }
        assert_eq!(kind(Some("ExpiredToken"), Some(400)), Kind::Denied);
        assert_eq!(kind(None, Some(403)), Kind::Denied);
        for (code, status) in [
            (Some("SlowDown"), Some(503)),
            (None, Some(429)),
            (Some("ThrottlingException"), Some(400)),
        ] {
            assert_eq!(kind(code, status), Kind::Throttled, "{code:?} {status:?}");
        }
        for (code, status) in [
            (Some("InternalError"), Some(500)),
            (Some("RequestTimeout"), Some(400)),
            (None, Some(502)),
            (None, Some(503)),
        ] {
            assert_eq!(kind(code, status), Kind::Transient, "{code:?} {status:?}");
        }
        assert_eq!(kind(Some("RequestTimeTooSkewed"), Some(403)), Kind::Other);
        assert_eq!(kind(Some("InvalidArgument"), Some(400)), Kind::Other);
        assert_eq!(kind(Some("BucketAlreadyExists"), Some(409)), Kind::Other);
    }

    #[test]
    fn store_errors_name_op_and_key() {
        let f = service_failure(
            Some("AccessDenied"),
            Some("Access Denied"),
            Some("R1"),
            Some(403),
        );
        let e = f.into_store(Op::Get, "0000/x.ltx", "b");
        let msg = e.to_string();
        assert!(matches!(e, StoreError::PermissionDenied { .. }));
        assert!(msg.contains("get 0000/x.ltx"), "{msg}");
        assert!(msg.contains("AccessDenied: Access Denied (HTTP 403, request id R1)"));

        let e = service_failure(Some("NoSuchBucket"), None, None, Some(404)).into_store(
            Op::List,
            "",
            "nope",
        );
        assert!(e.is_not_found());
        assert!(
            e.to_string().contains("bucket \"nope\" does not exist"),
            "{e}"
        );

        let e = service_failure(None, None, None, Some(412)).into_store(Op::Put, "k", "b");
        assert!(matches!(e, StoreError::AlreadyExists { .. }));
        let e = service_failure(None, None, None, Some(503)).into_store(Op::Put, "k", "b");
        assert!(e.is_transient());
    }
}
