//! SFTP and connection failures mapped to `StoreError`, naming the key.

use super::*;

/// Errors inside an operation: SFTP errors (mapped once the retry decision is made,
/// naming the key they concern) or finished store errors.
#[derive(Debug)]
pub(crate) enum OpError {
    Sftp(String, SftpError),
    Store(StoreError),
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        OpError::Store(e)
    }
}

pub(crate) fn sftp(key: &str) -> impl FnOnce(SftpError) -> OpError + '_ {
    move |e| OpError::Sftp(key.to_owned(), e)
}

pub(crate) fn status_code(e: &SftpError) -> Option<StatusCode> {
    match e {
        SftpError::Status(s) => Some(s.status_code),
        _ => None,
    }
}

pub(crate) fn is_connection_error(e: &SftpError) -> bool {
    match e {
        SftpError::Status(s) => matches!(
            s.status_code,
            StatusCode::NoConnection | StatusCode::ConnectionLost
        ),
        SftpError::IO(_) | SftpError::Timeout | SftpError::UnexpectedBehavior(_) => true,
        SftpError::Limited(_) | SftpError::UnexpectedPacket => false,
    }
}

pub(crate) fn sftp_error(op: Op, key: &str, e: SftpError, transient: bool) -> StoreError {
    let key = key.to_owned();
    match status_code(&e) {
        Some(StatusCode::NoSuchFile) => StoreError::NotFound { key },
        Some(StatusCode::PermissionDenied) => StoreError::PermissionDenied {
            op,
            key,
            detail: e.to_string(),
        },
        _ if transient => StoreError::Transient {
            op,
            key,
            source: Box::new(e),
        },
        _ => StoreError::Other {
            op,
            key,
            source: Box::new(e),
        },
    }
}

pub(crate) fn connect_error(op: Op, key: &str, e: ConnectError) -> StoreError {
    let key = key.to_owned();
    match e {
        ConnectError::Unreachable { .. } | ConnectError::Handshake { .. } => {
            StoreError::Transient {
                op,
                key,
                source: Box::new(e),
            }
        }
        ConnectError::Auth(detail) => StoreError::PermissionDenied { op, key, detail },
        ConnectError::HostKey(_) | ConnectError::Setup(_) => StoreError::Other {
            op,
            key,
            source: Box::new(e),
        },
    }
}

pub(crate) fn other(op: Op, key: &str, msg: String) -> StoreError {
    StoreError::Other {
        op,
        key: key.to_owned(),
        source: Box::new(io::Error::other(msg)),
    }
}
