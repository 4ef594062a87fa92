//! Errors of the LTX codec.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum LtxError {
    #[error("LTX I/O error")]
    Io(#[source] io::Error),

    /// The input ended before the file did.
    #[error("LTX file is truncated")]
    Truncated,

    #[error("invalid LTX header: {0}")]
    InvalidHeader(String),

    /// A bad page frame; `pgno` is 0 for the terminator.
    #[error("invalid LTX page frame for page {pgno}: {reason}")]
    InvalidPage { pgno: u32, reason: String },

    #[error("invalid LTX page index: {0}")]
    InvalidIndex(String),

    #[error("invalid LTX trailer: {0}")]
    InvalidTrailer(String),

    /// The stored FileChecksum differs from the one computed over the file.
    #[error("LTX file checksum mismatch: stored {stored:016x}, computed {computed:016x}")]
    ChecksumMismatch { stored: u64, computed: u64 },

    /// A checksum-enabled snapshot whose PostApplyChecksum does not match its pages.
    #[error("LTX post-apply checksum mismatch: stored {stored:016x}, computed {computed:016x}")]
    PostApplyChecksumMismatch { stored: u64, computed: u64 },

    /// A snapshot (MinTXID 1) must hold every page 1..=Commit except the lock page.
    #[error("LTX snapshot is missing page {missing_pgno} (commit {commit})")]
    IncompleteSnapshot { missing_pgno: u32, commit: u32 },

    /// Compaction inputs must chain without gaps and each must advance MaxTXID.
    #[error(
        "non-contiguous LTX files: have up to TXID {prev_max_txid:016x} \
         but next file covers {next_min_txid:016x}-{next_max_txid:016x}"
    )]
    NotContiguous {
        prev_max_txid: u64,
        next_min_txid: u64,
        next_max_txid: u64,
    },

    #[error("LTX page size mismatch: expected {expected}, got {got}")]
    PageSizeMismatch { expected: u32, got: u32 },

    /// A caller passed something unusable (wrong buffer size, no inputs, ...).
    #[error("invalid argument to LTX codec: {0}")]
    InvalidArgument(String),

    /// An earlier I/O or format error left the encoder/decoder mid-frame.
    #[error("LTX codec used after an earlier error")]
    Poisoned,
}

impl From<io::Error> for LtxError {
    fn from(e: io::Error) -> Self {
        // A short read is a property of the file, not of the device; callers
        // (restore) treat a truncated object differently from a failing disk.
        if e.kind() == io::ErrorKind::UnexpectedEof {
            LtxError::Truncated
        } else {
            LtxError::Io(e)
        }
    }
}

impl LtxError {
    pub(crate) fn page(pgno: u32, reason: impl Into<String>) -> Self {
        LtxError::InvalidPage {
            pgno,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unexpected_eof_maps_to_truncated() {
        let e: LtxError = io::Error::from(io::ErrorKind::UnexpectedEof).into();
        assert!(matches!(e, LtxError::Truncated));
        let e: LtxError = io::Error::from(io::ErrorKind::PermissionDenied).into();
        assert!(matches!(e, LtxError::Io(_)));
    }
}
