//! LTX file codec, byte-compatible with Litestream 0.5.17 (superfly/ltx v0.5.2).
//!
//! Layout: a 100-byte header, page frames, a 6-byte zero terminator, a varint page
//! index, and a 16-byte trailer. `docs/ltx-format.md` (at the repository root) is the
//! byte-level description this module follows.
//!
//! The writer always emits the current page encoding (flag `0x0001`: a size field
//! and a raw LZ4 block); the reader also accepts the legacy LZ4-frame encoding
//! (flags `0x0000`) that Litestream 0.5.15 and older wrote, decided per frame.

mod checksum;
mod compact;
mod decode;
mod encode;
mod error;
mod header;
mod legacy;
mod varint;

pub use checksum::{CHECKSUM_FLAG, crc64, database_checksum, page_checksum};
pub use compact::compact;
pub use decode::Decoder;
pub use encode::Encoder;
pub use error::LtxError;
pub use header::{Header, Trailer};

/// Size of the fixed file header.
pub const HEADER_SIZE: usize = 100;
/// Size of the fixed file trailer (PostApplyChecksum, FileChecksum).
pub const TRAILER_SIZE: usize = 16;
/// Size of a page header (Pgno u32, Flags u16); the terminator has the same size.
pub const PAGE_HEADER_SIZE: usize = 6;
/// File magic; shared by LTX format versions 2 and 3.
pub const MAGIC: [u8; 4] = *b"LTX1";
/// Header flag: database checksum tracking disabled. Litestream always sets it.
pub const FLAG_NO_CHECKSUM: u32 = 0x2;
/// Page-header flag: a u32 compressed size follows and the data is a raw LZ4 block.
pub const PAGE_FLAG_SIZE: u16 = 0x1;

/// Byte offset of SQLite's PENDING_BYTE; the page holding it never carries data.
const PENDING_BYTE: u32 = 0x4000_0000;

/// Page number of SQLite's lock page for `page_size`. Returns 0 (no page) for a
/// zero page size rather than panicking, since 0 is never a valid page number.
pub fn lock_pgno(page_size: u32) -> u32 {
    PENDING_BYTE.checked_div(page_size).map_or(0, |q| q + 1)
}

/// Whether `page_size` is a power of two in 512..=65536.
pub fn is_valid_page_size(page_size: u32) -> bool {
    (512..=65536).contains(&page_size) && page_size.is_power_of_two()
}

/// The page number a snapshot must contain after `pgno`, skipping the lock page.
fn next_snapshot_pgno(pgno: u32, lock: u32) -> u32 {
    let next = pgno.saturating_add(1);
    if next == lock {
        next.saturating_add(1)
    } else {
        next
    }
}

/// Upper bound we accept for one compressed page. lz4_flex's bound is looser than
/// LZ4's own (PageSize + PageSize/255 + 16), so any real writer's blocks fit.
fn max_compressed_size(page_size: usize) -> usize {
    lz4_flex::block::get_maximum_output_size(page_size)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn lock_pgno_matches_spec() {
        assert_eq!(lock_pgno(4096), 262_145);
        assert_eq!(lock_pgno(65536), 16_385);
        assert_eq!(lock_pgno(512), 2_097_153);
        assert_eq!(lock_pgno(0), 0);
    }

    #[test]
    fn page_size_validity() {
        for ps in [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536] {
            assert!(is_valid_page_size(ps), "{ps}");
        }
        for ps in [0, 1, 256, 511, 513, 1000, 4095, 131072, u32::MAX] {
            assert!(!is_valid_page_size(ps), "{ps}");
        }
    }

    #[test]
    fn snapshot_sequence_skips_lock_page() {
        assert_eq!(next_snapshot_pgno(0, 16385), 1);
        assert_eq!(next_snapshot_pgno(16383, 16385), 16384);
        assert_eq!(next_snapshot_pgno(16384, 16385), 16386);
    }
}
