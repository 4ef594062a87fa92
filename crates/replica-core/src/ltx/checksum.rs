//! CRC-64/GO-ISO (Go's `hash/crc64` ISO table) and the checksums built on it.
//!
//! The CRC runs over every decompressed page on both encode and decode, so it is on
//! the hot path of capture, compaction and restore. `crc-fast` computes it with
//! carry-less multiplication (PCLMULQDQ on x86-64, PMULL on aarch64) at several GB/s
//! per core, where a table-driven CRC manages about one; a unit test checks it
//! against the table-driven `crc` crate on random inputs and random splits.

use std::sync::LazyLock;

use crc_fast::{CrcParams, Digest};

/// Set in every stored checksum so that a stored value is never 0 (0 = absent).
pub const CHECKSUM_FLAG: u64 = 1 << 63;

/// CRC-64/GO-ISO in the Rocksoft model: poly 0x1b, init and xorout all ones,
/// reflected, check value 0xb90956c775a41001. The folding keys are derived once.
static GO_ISO: LazyLock<CrcParams> = LazyLock::new(|| {
    CrcParams::new(
        "CRC-64/GO-ISO",
        64,
        0x1b,
        u64::MAX,
        true,
        u64::MAX,
        0xb909_56c7_75a4_1001,
    )
});

fn digest() -> Digest {
    Digest::new_with_params(*GO_ISO)
}

/// Plain CRC-64/GO-ISO of `data`, without the checksum flag.
pub fn crc64(data: &[u8]) -> u64 {
    crc_fast::checksum_with_params(*GO_ISO, data)
}

/// Checksum of one page as used by the rolling database checksum (docs/ltx-format.md §2.3):
/// flag | CRC(u32 BE pgno ‖ data).
pub fn page_checksum(pgno: u32, data: &[u8]) -> u64 {
    let mut d = digest();
    d.update(&pgno.to_be_bytes());
    d.update(data);
    CHECKSUM_FLAG | d.finalize()
}

/// Rolling checksum of a database image given as `(pgno, page)` pairs. The caller
/// leaves out the lock page. An empty image yields `CHECKSUM_FLAG`.
pub fn database_checksum<'a>(pages: impl IntoIterator<Item = (u32, &'a [u8])>) -> u64 {
    pages.into_iter().fold(CHECKSUM_FLAG, |acc, (pgno, data)| {
        CHECKSUM_FLAG | (acc ^ page_checksum(pgno, data))
    })
}

/// Running FileChecksum over the bytes fed so far (docs/ltx-format.md §2.2).
pub(crate) struct FileHasher {
    digest: Digest,
}

impl FileHasher {
    pub(crate) fn new() -> Self {
        FileHasher { digest: digest() }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.digest.update(bytes);
    }

    /// The value stored in the trailer: the CRC with the checksum flag forced on.
    pub(crate) fn file_checksum(&self) -> u64 {
        CHECKSUM_FLAG | self.digest.finalize()
    }
}

impl std::fmt::Debug for FileHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileHasher")
            .field("current", &format_args!("{:016x}", self.file_checksum()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_go_iso_check_value() {
        assert_eq!(crc64(b"123456789"), 0xB909_56C7_75A4_1001);
        let mut h = FileHasher::new();
        h.update(b"1234");
        h.update(b"56789");
        assert_eq!(h.file_checksum(), CHECKSUM_FLAG | 0xB909_56C7_75A4_1001);
    }

    /// The SIMD CRC equals the table-driven one on random inputs of every length up
    /// to a few pages, fed whole and in random pieces.
    #[test]
    fn simd_crc_matches_the_table_driven_one() {
        use rand::{Rng, RngCore, SeedableRng};
        let table = crc::Crc::<u64>::new(&crc::CRC_64_GO_ISO);
        let mut rng = rand::rngs::StdRng::seed_from_u64(64);
        let mut buf = vec![0u8; 9000];
        rng.fill_bytes(&mut buf);
        for len in (0..600).chain([1023, 1024, 1025, 4095, 4096, 4100, 8192, 9000]) {
            let data = &buf[..len];
            let want = table.checksum(data);
            assert_eq!(crc64(data), want, "len {len}");
            let mut h = FileHasher::new();
            let mut rest = data;
            while !rest.is_empty() {
                let n = rng.random_range(1..=rest.len());
                h.update(&rest[..n]);
                rest = &rest[n..];
            }
            assert_eq!(
                h.file_checksum(),
                CHECKSUM_FLAG | want,
                "len {len} in pieces"
            );
        }
    }

    #[test]
    fn empty_database_checksum_is_flag() {
        assert_eq!(database_checksum(std::iter::empty()), CHECKSUM_FLAG);
    }

    // Golden vectors from the ltx v0.5.2 test suite (docs/ltx-format.md §2.3).
    #[test]
    fn rolling_checksum_golden_vectors() {
        let p: Vec<Vec<u8>> = (1..=3u8).map(|b| vec![b; 512]).collect();
        assert_eq!(
            database_checksum([(1, &p[0][..]), (2, &p[1][..]), (3, &p[2][..])]),
            0xEFFF_FFFF_ECD9_9000
        );

        let one = vec![b'1'; 512];
        assert_eq!(database_checksum([(1, &one[..])]), 0xEB1A_9992_3104_4DDD);

        let two = vec![b'2'; 1024];
        let three = vec![b'3'; 1024];
        assert_eq!(
            database_checksum([(1, &two[..]), (2, &three[..])]),
            0xE189_9B6D_587A_AAAA
        );

        let q: Vec<Vec<u8>> = [0x81u8, 0x82, 0x83]
            .iter()
            .map(|&b| vec![b; 1024])
            .collect();
        assert_eq!(
            database_checksum([(1, &q[0][..]), (2, &q[1][..]), (3, &q[2][..])]),
            0x8A24_9272_AD9F_7DEA
        );
    }

    #[test]
    fn rolling_checksum_is_order_independent() {
        let a = vec![7u8; 512];
        let b = vec![9u8; 512];
        assert_eq!(
            database_checksum([(1, &a[..]), (2, &b[..])]),
            database_checksum([(2, &b[..]), (1, &a[..])])
        );
    }
}
