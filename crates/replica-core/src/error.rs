//! The error every object-store backend speaks.
//!
//! Variants are semantic, not per-backend: [`crate::retry`] retries `Transient` and
//! `Throttled`, the engine treats `AlreadyExists` as a lost create-only race, and
//! reports the rest to the user.
//! Messages name the object (key) and never carry credentials.
//!
//! Each error's message states its own level only; its cause is reached through
//! [`std::error::Error::source`], never repeated in the message. [`Chain`] prints an
//! error with all its causes, for logs and for the binary.

use std::fmt;

/// What an object-store operation was doing, for error messages and request counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Put,
    Get,
    Head,
    List,
    Delete,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Head => "head",
            Op::List => "list",
            Op::Delete => "delete",
        })
    }
}

/// An error followed by each of its causes, `error: cause: cause`: how a log line or
/// another error's text shows an error, so that no cause is lost.
///
/// ```
/// # use replica_core::error::{Chain, Op, StoreError};
/// let e = StoreError::Other {
///     op: Op::Get,
///     key: "ltx/0/x.ltx".into(),
///     source: Box::new(std::io::Error::other("disk on fire")),
/// };
/// assert_eq!(Chain(&e).to_string(), "failed to get ltx/0/x.ltx: disk on fire");
/// ```
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {key} not found")]
    NotFound { key: String },

    #[error("object {key} already exists (create-only put)")]
    AlreadyExists { key: String },

    /// A conditional put named a version the object no longer has: someone else
    /// wrote it since it was read.
    #[error("object {key} changed since it was read (conditional put refused)")]
    Conflict { key: String },

    /// Not sent: this process's lease on the replica is not valid now. `lost`: another
    /// writer took it, for good; otherwise it lapsed while the store did not answer,
    /// and writes resume once a renewal proves no one else took it.
    #[error("{key} was not written: {}", if *lost { "another replicator took this replica's lease" } else { "this process's lease on the replica lapsed; uploads resume once it is renewed" })]
    Fenced { key: String, lost: bool },

    #[error("permission denied to {op} {key}: {detail}; check the credentials and their grants")]
    PermissionDenied { op: Op, key: String, detail: String },

    /// Worth retrying: network errors, throttling, 5xx.
    #[error("transient failure to {op} {key}")]
    Transient { op: Op, key: String, source: Source },

    /// The store asked us to slow down (429, S3's `SlowDown`, Azure's `ServerBusy`):
    /// transient, and the next attempt waits at least `retry_after` when the store
    /// said how long.
    #[error("the store is throttling requests ({op} {key})")]
    Throttled {
        op: Op,
        key: String,
        retry_after: Option<std::time::Duration>,
        source: Source,
    },

    /// A key or list prefix that breaks [`crate::key`]'s rules; nothing was sent.
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },

    #[error("invalid replica URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error("{what} is not supported by the {backend} backend")]
    Unsupported { backend: &'static str, what: String },

    /// A permanent failure that fits no other variant.
    #[error("failed to {op} {key}")]
    Other { op: Op, key: String, source: Source },
}

impl StoreError {
    /// One word for the variant, for metrics labels (`replica_errors_total{kind}`).
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::NotFound { .. } => "not_found",
            StoreError::AlreadyExists { .. } | StoreError::Conflict { .. } => "conflict",
            StoreError::Fenced { .. } => "fenced",
            StoreError::PermissionDenied { .. } => "permission_denied",
            StoreError::Transient { .. } => "transient",
            StoreError::Throttled { .. } => "throttled",
            StoreError::InvalidKey { .. } | StoreError::InvalidUrl { .. } => "invalid",
            StoreError::Unsupported { .. } => "unsupported",
            StoreError::Other { .. } => "other",
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Transient { .. } | StoreError::Throttled { .. }
        )
    }

    /// The store refused a conditional write: the object exists, or has another
    /// version than the one named.
    pub fn is_precondition(&self) -> bool {
        matches!(
            self,
            StoreError::AlreadyExists { .. } | StoreError::Conflict { .. }
        )
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    /// A response body from the store that failed while it was read: whatever the
    /// I/O error says (an early end, a reset, a decoding error of the transport), the
    /// network broke it, so it is worth retrying. Not for local files.
    pub fn body_broken(op: Op, key: &str, err: std::io::Error) -> Self {
        StoreError::Transient {
            op,
            key: key.to_owned(),
            source: Box::new(err),
        }
    }

    /// Maps a local I/O error to the right variant. Backends whose storage is a file
    /// system (file, sftp) share this mapping.
    pub fn from_io(op: Op, key: &str, err: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let key = key.to_owned();
        match err.kind() {
            K::NotFound => StoreError::NotFound { key },
            K::AlreadyExists => StoreError::AlreadyExists { key },
            K::PermissionDenied => StoreError::PermissionDenied {
                op,
                key,
                detail: err.to_string(),
            },
            K::Interrupted
            | K::TimedOut
            | K::WouldBlock
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::BrokenPipe => StoreError::Transient {
                op,
                key,
                source: Box::new(err),
            },
            _ => StoreError::Other {
                op,
                key,
                source: Box::new(err),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("replication of app.db failed")]
    struct Outer(#[source] StoreError);

    #[test]
    fn chain_prints_every_level_once_in_order() {
        let inner = std::io::Error::other("connection refused");
        let e = Outer(StoreError::Transient {
            op: Op::Put,
            key: "ltx/0/a.ltx".into(),
            source: Box::new(inner),
        });
        assert_eq!(
            Chain(&e).to_string(),
            "replication of app.db failed: transient failure to put ltx/0/a.ltx: connection refused"
        );
        // Each level states only itself.
        assert_eq!(e.to_string(), "replication of app.db failed");
    }

    #[test]
    fn chain_of_an_error_without_cause_is_its_message() {
        let e = StoreError::NotFound {
            key: "lock.json".into(),
        };
        assert_eq!(Chain(&e).to_string(), "object lock.json not found");
    }
}
