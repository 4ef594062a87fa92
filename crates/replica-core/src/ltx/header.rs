//! The 100-byte file header and the 16-byte trailer.

use super::checksum::CHECKSUM_FLAG;
use super::{FLAG_NO_CHECKSUM, HEADER_SIZE, LtxError, MAGIC, TRAILER_SIZE, is_valid_page_size};

/// Every header flag bit a valid file may set.
const HEADER_FLAG_MASK: u32 = FLAG_NO_CHECKSUM;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub flags: u32,
    pub page_size: u32,
    /// Database size in pages after this file is applied.
    pub commit: u32,
    pub min_txid: u64,
    pub max_txid: u64,
    /// Milliseconds since the Unix epoch, UTC.
    pub timestamp_ms: i64,
    pub pre_apply_checksum: u64,
    pub wal_offset: i64,
    pub wal_size: i64,
    pub wal_salt1: u32,
    pub wal_salt2: u32,
    pub node_id: u64,
}

impl Header {
    /// The file's creation time (`timestamp_ms`; times before the epoch read as it).
    pub fn time(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.timestamp_ms.max(0) as u64)
    }

    /// A snapshot holds the whole database (MinTXID 1), whatever its level.
    pub fn is_snapshot(&self) -> bool {
        self.min_txid == 1
    }

    pub fn no_checksum(&self) -> bool {
        self.flags & FLAG_NO_CHECKSUM != 0
    }

    /// The header rules the Go decoder applies (docs/ltx-format.md §1.1).
    pub fn validate(&self) -> Result<(), LtxError> {
        let bad = |msg: String| Err(LtxError::InvalidHeader(msg));
        if self.flags & !HEADER_FLAG_MASK != 0 {
            return bad(format!("unknown flags {:#010x}", self.flags));
        }
        if !is_valid_page_size(self.page_size) {
            return bad(format!("invalid page size {}", self.page_size));
        }
        if self.min_txid == 0 {
            return bad("min TXID is zero".into());
        }
        if self.max_txid == 0 {
            return bad("max TXID is zero".into());
        }
        if self.min_txid > self.max_txid {
            return bad(format!(
                "min TXID {:016x} greater than max TXID {:016x}",
                self.min_txid, self.max_txid
            ));
        }
        if self.wal_offset < 0 {
            return bad(format!("negative WAL offset {}", self.wal_offset));
        }
        if self.wal_size < 0 {
            return bad(format!("negative WAL size {}", self.wal_size));
        }
        if (self.wal_salt1 != 0 || self.wal_salt2 != 0) && self.wal_offset == 0 {
            return bad("WAL salts set without a WAL offset".into());
        }
        if self.wal_offset == 0 && self.wal_size != 0 {
            return bad("WAL size set without a WAL offset".into());
        }
        if self.is_snapshot() {
            if self.pre_apply_checksum != 0 {
                return bad("snapshot has a pre-apply checksum".into());
            }
        } else if self.no_checksum() {
            if self.pre_apply_checksum != 0 {
                return bad("pre-apply checksum set although checksums are disabled".into());
            }
        } else if self.pre_apply_checksum & CHECKSUM_FLAG == 0 {
            return bad(format!(
                "pre-apply checksum {:016x} lacks the checksum flag",
                self.pre_apply_checksum
            ));
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&self.flags.to_be_bytes());
        b[8..12].copy_from_slice(&self.page_size.to_be_bytes());
        b[12..16].copy_from_slice(&self.commit.to_be_bytes());
        b[16..24].copy_from_slice(&self.min_txid.to_be_bytes());
        b[24..32].copy_from_slice(&self.max_txid.to_be_bytes());
        b[32..40].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        b[40..48].copy_from_slice(&self.pre_apply_checksum.to_be_bytes());
        b[48..56].copy_from_slice(&self.wal_offset.to_be_bytes());
        b[56..64].copy_from_slice(&self.wal_size.to_be_bytes());
        b[64..68].copy_from_slice(&self.wal_salt1.to_be_bytes());
        b[68..72].copy_from_slice(&self.wal_salt2.to_be_bytes());
        b[72..80].copy_from_slice(&self.node_id.to_be_bytes());
        b
    }

    /// Parses the first `HEADER_SIZE` bytes of `b` and validates them. Reserved
    /// bytes 80..100 are ignored, as Litestream does.
    pub fn from_bytes(b: &[u8]) -> Result<Header, LtxError> {
        let b: &[u8; HEADER_SIZE] = b
            .get(..HEADER_SIZE)
            .and_then(|s| s.try_into().ok())
            .ok_or(LtxError::Truncated)?;
        if b[0..4] != MAGIC {
            return Err(LtxError::InvalidHeader(format!(
                "bad magic {:02x?}",
                &b[0..4]
            )));
        }
        let h = Header {
            flags: be_u32(b, 4),
            page_size: be_u32(b, 8),
            commit: be_u32(b, 12),
            min_txid: be_u64(b, 16),
            max_txid: be_u64(b, 24),
            timestamp_ms: be_u64(b, 32) as i64,
            pre_apply_checksum: be_u64(b, 40),
            wal_offset: be_u64(b, 48) as i64,
            wal_size: be_u64(b, 56) as i64,
            wal_salt1: be_u32(b, 64),
            wal_salt2: be_u32(b, 68),
            node_id: be_u64(b, 72),
        };
        h.validate()?;
        Ok(h)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub post_apply_checksum: u64,
    pub file_checksum: u64,
}

impl Trailer {
    pub fn to_bytes(&self) -> [u8; TRAILER_SIZE] {
        let mut b = [0u8; TRAILER_SIZE];
        b[0..8].copy_from_slice(&self.post_apply_checksum.to_be_bytes());
        b[8..16].copy_from_slice(&self.file_checksum.to_be_bytes());
        b
    }

    /// Parses without validating; the rules depend on the header (see
    /// [`Trailer::validate`]).
    pub fn from_bytes(b: &[u8; TRAILER_SIZE]) -> Trailer {
        Trailer {
            post_apply_checksum: be_u64(b, 0),
            file_checksum: be_u64(b, 8),
        }
    }

    /// Trailer rules for a file with `header` (docs/ltx-format.md §1.6).
    pub fn validate(&self, header: &Header) -> Result<(), LtxError> {
        if header.no_checksum() {
            if self.post_apply_checksum != 0 {
                return Err(LtxError::InvalidTrailer(
                    "post-apply checksum set although checksums are disabled".into(),
                ));
            }
        } else if self.post_apply_checksum & CHECKSUM_FLAG == 0 {
            return Err(LtxError::InvalidTrailer(format!(
                "post-apply checksum {:016x} lacks the checksum flag",
                self.post_apply_checksum
            )));
        }
        if self.file_checksum & CHECKSUM_FLAG == 0 {
            return Err(LtxError::InvalidTrailer(format!(
                "file checksum {:016x} lacks the checksum flag",
                self.file_checksum
            )));
        }
        Ok(())
    }
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Header {
        Header {
            flags: FLAG_NO_CHECKSUM,
            page_size: 4096,
            commit: 10,
            min_txid: 2,
            max_txid: 3,
            timestamp_ms: 1_795_504_231_913,
            pre_apply_checksum: 0,
            wal_offset: 32,
            wal_size: 4120,
            wal_salt1: 0xb0ce_fd0e,
            wal_salt2: 0x4d86_f0a0,
            node_id: 0,
        }
    }

    fn rejects(h: Header) {
        assert!(
            matches!(h.validate(), Err(LtxError::InvalidHeader(_))),
            "accepted {h:?}"
        );
        assert!(Header::from_bytes(&h.to_bytes()).is_err());
    }

    #[test]
    fn header_round_trip() {
        let h = Header {
            node_id: 0x0102_0304_0506_0708,
            timestamp_ms: -5,
            ..base()
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..4], b"LTX1");
        assert!(b[80..].iter().all(|&x| x == 0));
        assert_eq!(Header::from_bytes(&b).unwrap(), h);
    }

    #[test]
    fn header_rules() {
        base().validate().unwrap();
        rejects(Header {
            flags: 0x1,
            ..base()
        });
        rejects(Header {
            flags: 0x6,
            ..base()
        });
        for ps in [0, 256, 1000, 131_072] {
            rejects(Header {
                page_size: ps,
                ..base()
            });
        }
        rejects(Header {
            min_txid: 0,
            ..base()
        });
        rejects(Header {
            max_txid: 0,
            ..base()
        });
        rejects(Header {
            min_txid: 4,
            max_txid: 3,
            ..base()
        });
        rejects(Header {
            wal_offset: -1,
            ..base()
        });
        rejects(Header {
            wal_size: -1,
            ..base()
        });
        rejects(Header {
            wal_offset: 0,
            wal_size: 0,
            ..base()
        }); // salts still set
        rejects(Header {
            wal_offset: 0,
            wal_salt1: 0,
            wal_salt2: 0,
            ..base()
        }); // size still set
        Header {
            wal_offset: 0,
            wal_size: 0,
            wal_salt1: 0,
            wal_salt2: 0,
            ..base()
        }
        .validate()
        .unwrap();

        // Pre-apply checksum rules.
        rejects(Header {
            pre_apply_checksum: CHECKSUM_FLAG | 1,
            min_txid: 1,
            ..base()
        });
        rejects(Header {
            pre_apply_checksum: CHECKSUM_FLAG | 1,
            ..base()
        });
        rejects(Header {
            flags: 0,
            pre_apply_checksum: 0,
            ..base()
        });
        rejects(Header {
            flags: 0,
            pre_apply_checksum: 0x1234,
            ..base()
        });
        Header {
            flags: 0,
            pre_apply_checksum: CHECKSUM_FLAG | 0x1234,
            ..base()
        }
        .validate()
        .unwrap();
        Header {
            flags: 0,
            min_txid: 1,
            pre_apply_checksum: 0,
            ..base()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn header_from_bytes_rejects_bad_magic_and_short_input() {
        let mut b = base().to_bytes();
        assert!(matches!(
            Header::from_bytes(&b[..99]),
            Err(LtxError::Truncated)
        ));
        b[3] = b'2';
        assert!(matches!(
            Header::from_bytes(&b),
            Err(LtxError::InvalidHeader(_))
        ));
    }

    #[test]
    fn reserved_bytes_are_ignored() {
        let mut b = base().to_bytes();
        b[90] = 0xff;
        assert_eq!(Header::from_bytes(&b).unwrap(), base());
    }

    #[test]
    fn trailer_rules() {
        let nock = base();
        let ck = Header {
            flags: 0,
            pre_apply_checksum: CHECKSUM_FLAG,
            ..base()
        };
        let t = |post, file| Trailer {
            post_apply_checksum: post,
            file_checksum: file,
        };
        t(0, CHECKSUM_FLAG | 5).validate(&nock).unwrap();
        assert!(t(CHECKSUM_FLAG, CHECKSUM_FLAG).validate(&nock).is_err());
        assert!(t(0, 5).validate(&nock).is_err());
        t(CHECKSUM_FLAG | 1, CHECKSUM_FLAG).validate(&ck).unwrap();
        assert!(t(0, CHECKSUM_FLAG).validate(&ck).is_err());
        let tr = t(1, 2);
        assert_eq!(Trailer::from_bytes(&tr.to_bytes()), tr);
    }
}
