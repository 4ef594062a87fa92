//! Streaming LTX writer.

use std::io::Write;

use super::checksum::{CHECKSUM_FLAG, FileHasher, page_checksum};
use super::varint::put_uvarint;
use super::{
    HEADER_SIZE, Header, LtxError, PAGE_FLAG_SIZE, PAGE_HEADER_SIZE, Trailer, lock_pgno,
    max_compressed_size, next_snapshot_pgno,
};

/// One page-index entry: the frame of `pgno` starts at absolute `offset` and is
/// `size` bytes long (page header, size field and compressed block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) pgno: u32,
    pub(crate) offset: u64,
    pub(crate) size: u64,
}

/// Writes one LTX file: header at construction, one frame per [`write_page`]
/// call, and the terminator, index and trailer in [`finish`].
///
/// Only the current page encoding (flag `0x0001`, raw LZ4 block) is written.
/// Wrap `w` in a `BufWriter`: frames are written in a few small pieces.
///
/// [`write_page`]: Encoder::write_page
/// [`finish`]: Encoder::finish
#[derive(Debug)]
pub struct Encoder<W: Write> {
    w: W,
    header: Header,
    lock: u32,
    hasher: FileHasher,
    /// Absolute offset of the next byte to write.
    offset: u64,
    index: Vec<IndexEntry>,
    last_pgno: u32,
    cbuf: Vec<u8>,
    /// XOR of page checksums; only maintained for checksum-enabled snapshots,
    /// where the post-apply checksum is a function of the pages written.
    rolling: u64,
    post_apply: Option<u64>,
    /// A write failed part-way through; the output is unusable.
    poisoned: bool,
}

impl<W: Write> Encoder<W> {
    /// Validates `header` and writes it.
    ///
    /// Commit 0 is refused for NoChecksum files: the writer rules require a
    /// post-apply checksum of exactly `CHECKSUM_FLAG` for an empty database,
    /// which NoChecksum forbids, so Litestream could not have written such a file.
    pub fn new(mut w: W, header: Header) -> Result<Self, LtxError> {
        header.validate()?;
        if header.commit == 0 && header.no_checksum() {
            return Err(LtxError::InvalidHeader(
                "commit 0 (empty database) cannot be written with NoChecksum".into(),
            ));
        }
        let bytes = header.to_bytes();
        w.write_all(&bytes)?;
        let mut hasher = FileHasher::new();
        hasher.update(&bytes);
        let page_size = header.page_size as usize;
        Ok(Encoder {
            w,
            header,
            lock: lock_pgno(header.page_size),
            hasher,
            offset: HEADER_SIZE as u64,
            index: Vec::new(),
            last_pgno: 0,
            cbuf: vec![0u8; max_compressed_size(page_size)],
            rolling: 0,
            post_apply: None,
            poisoned: false,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Sets the PostApplyChecksum of a checksum-enabled incremental file, which
    /// depends on database state the encoder never sees. Snapshots compute it
    /// themselves; NoChecksum files must leave it at 0.
    pub fn set_post_apply_checksum(&mut self, checksum: u64) -> Result<(), LtxError> {
        if self.header.no_checksum() {
            return Err(LtxError::InvalidArgument(
                "post-apply checksum not allowed with NoChecksum".into(),
            ));
        }
        if checksum & CHECKSUM_FLAG == 0 {
            return Err(LtxError::InvalidArgument(format!(
                "post-apply checksum {checksum:016x} lacks the checksum flag"
            )));
        }
        self.post_apply = Some(checksum);
        Ok(())
    }

    /// Appends page `pgno`. Rule violations (docs/ltx-format.md §1.4) are reported before
    /// anything is written, so the encoder stays usable after them.
    pub fn write_page(&mut self, pgno: u32, data: &[u8]) -> Result<(), LtxError> {
        if self.poisoned {
            return Err(LtxError::Poisoned);
        }
        self.check_page(pgno, data)?;

        let n = lz4_flex::block::compress_into(data, &mut self.cbuf)
            .map_err(|e| LtxError::page(pgno, format!("LZ4 compression failed: {e}")))?;
        let csize =
            u32::try_from(n).map_err(|_| LtxError::page(pgno, "compressed page too large"))?;
        let mut head = [0u8; PAGE_HEADER_SIZE + 4];
        head[0..4].copy_from_slice(&pgno.to_be_bytes());
        head[4..6].copy_from_slice(&PAGE_FLAG_SIZE.to_be_bytes());
        head[6..10].copy_from_slice(&csize.to_be_bytes());

        let written = self
            .w
            .write_all(&head)
            .and_then(|()| self.w.write_all(&self.cbuf[..n]));
        if let Err(e) = written {
            self.poisoned = true;
            return Err(e.into());
        }

        // The FileChecksum covers the decompressed page, not the block on disk.
        self.hasher.update(&head);
        self.hasher.update(data);
        if self.tracks_rolling_checksum() {
            self.rolling ^= page_checksum(pgno, data);
        }
        let size = (head.len() + n) as u64;
        self.index.push(IndexEntry {
            pgno,
            offset: self.offset,
            size,
        });
        self.offset += size;
        self.last_pgno = pgno;
        Ok(())
    }

    fn check_page(&self, pgno: u32, data: &[u8]) -> Result<(), LtxError> {
        let h = &self.header;
        if data.len() != h.page_size as usize {
            return Err(LtxError::InvalidArgument(format!(
                "page {pgno} has {} bytes, page size is {}",
                data.len(),
                h.page_size
            )));
        }
        if pgno == 0 {
            return Err(LtxError::page(pgno, "page number 0"));
        }
        if pgno > h.commit {
            return Err(LtxError::page(
                pgno,
                format!("page beyond commit {}", h.commit),
            ));
        }
        if pgno == self.lock {
            return Err(LtxError::page(pgno, "lock page"));
        }
        if pgno <= self.last_pgno {
            return Err(LtxError::page(
                pgno,
                format!("not after previous page {}", self.last_pgno),
            ));
        }
        if h.is_snapshot() {
            let expected = next_snapshot_pgno(self.last_pgno, self.lock);
            if pgno != expected {
                return Err(LtxError::IncompleteSnapshot {
                    missing_pgno: expected,
                    commit: h.commit,
                });
            }
        }
        Ok(())
    }

    fn tracks_rolling_checksum(&self) -> bool {
        !self.header.no_checksum() && self.header.is_snapshot()
    }

    /// Writes the terminator, page index and trailer and returns the writer,
    /// which the caller still has to flush (and fsync).
    pub fn finish(mut self) -> Result<(W, Trailer), LtxError> {
        if self.poisoned {
            return Err(LtxError::Poisoned);
        }
        let h = self.header;
        if h.is_snapshot() {
            let expected = next_snapshot_pgno(self.last_pgno, self.lock);
            if expected <= h.commit {
                return Err(LtxError::IncompleteSnapshot {
                    missing_pgno: expected,
                    commit: h.commit,
                });
            }
        }
        let post_apply = if h.no_checksum() {
            0
        } else if h.is_snapshot() {
            CHECKSUM_FLAG | self.rolling
        } else if h.commit == 0 {
            CHECKSUM_FLAG
        } else {
            self.post_apply.ok_or_else(|| {
                LtxError::InvalidArgument(
                    "checksum-enabled incremental file needs set_post_apply_checksum".into(),
                )
            })?
        };

        let mut tail = vec![0u8; PAGE_HEADER_SIZE];
        let index_start = tail.len();
        for e in &self.index {
            put_uvarint(&mut tail, u64::from(e.pgno));
            put_uvarint(&mut tail, e.offset);
            put_uvarint(&mut tail, e.size);
        }
        put_uvarint(&mut tail, 0);
        let index_size = (tail.len() - index_start) as u64;
        tail.extend_from_slice(&index_size.to_be_bytes());
        tail.extend_from_slice(&post_apply.to_be_bytes());
        self.hasher.update(&tail);

        let trailer = Trailer {
            post_apply_checksum: post_apply,
            file_checksum: self.hasher.file_checksum(),
        };
        tail.extend_from_slice(&trailer.file_checksum.to_be_bytes());
        self.w.write_all(&tail)?;
        Ok((self.w, trailer))
    }
}

#[cfg(test)]
mod tests {
    use super::super::FLAG_NO_CHECKSUM;
    use super::*;

    fn hdr(min: u64, commit: u32, page_size: u32) -> Header {
        Header {
            flags: FLAG_NO_CHECKSUM,
            page_size,
            commit,
            min_txid: min,
            max_txid: min,
            timestamp_ms: 1,
            ..Header::default()
        }
    }

    #[test]
    fn encoder_rejects_invalid_header() {
        assert!(Encoder::new(Vec::new(), hdr(0, 1, 512)).is_err());
        assert!(Encoder::new(Vec::new(), hdr(1, 0, 512)).is_err());
    }

    #[test]
    fn encoder_enforces_page_rules() {
        let page = vec![1u8; 512];
        let mut e = Encoder::new(Vec::new(), hdr(2, 10, 512)).unwrap();
        assert!(matches!(
            e.write_page(1, &page[..100]),
            Err(LtxError::InvalidArgument(_))
        ));
        assert!(e.write_page(0, &page).is_err());
        assert!(e.write_page(11, &page).is_err());
        e.write_page(3, &page).unwrap();
        assert!(e.write_page(3, &page).is_err());
        assert!(e.write_page(2, &page).is_err());
        e.write_page(10, &page).unwrap();
        e.finish().unwrap();

        // The lock page of 512-byte pages is 2097153.
        let mut e = Encoder::new(Vec::new(), hdr(2, 3_000_000, 512)).unwrap();
        assert!(e.write_page(2_097_153, &page).is_err());
        e.write_page(2_097_154, &page).unwrap();
    }

    #[test]
    fn snapshot_must_be_contiguous_and_complete() {
        let page = vec![1u8; 512];
        let mut e = Encoder::new(Vec::new(), hdr(1, 3, 512)).unwrap();
        assert!(matches!(
            e.write_page(2, &page),
            Err(LtxError::IncompleteSnapshot {
                missing_pgno: 1,
                ..
            })
        ));
        e.write_page(1, &page).unwrap();
        assert!(e.write_page(3, &page).is_err());
        e.write_page(2, &page).unwrap();
        assert!(matches!(
            e.finish(),
            Err(LtxError::IncompleteSnapshot {
                missing_pgno: 3,
                commit: 3
            })
        ));
    }

    #[test]
    fn empty_incremental_file_layout() {
        let (out, t) = Encoder::new(Vec::new(), hdr(5, 7, 4096))
            .unwrap()
            .finish()
            .unwrap();
        // header, terminator, index terminator, IndexSize, trailer
        assert_eq!(out.len(), 100 + 6 + 1 + 8 + 16);
        assert_eq!(&out[106..115], &[0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(t.post_apply_checksum, 0);
        assert!(t.file_checksum & CHECKSUM_FLAG != 0);
        assert_eq!(&out[out.len() - 8..], &t.file_checksum.to_be_bytes());
    }

    struct FailingWriter(usize);
    impl Write for FailingWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.0 < buf.len() {
                return Err(std::io::Error::other("disk full"));
            }
            self.0 -= buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn write_failure_poisons_encoder() {
        let page = vec![1u8; 512];
        let mut e = Encoder::new(FailingWriter(105), hdr(2, 3, 512)).unwrap();
        assert!(matches!(e.write_page(1, &page), Err(LtxError::Io(_))));
        assert!(matches!(e.write_page(2, &page), Err(LtxError::Poisoned)));
        assert!(matches!(e.finish(), Err(LtxError::Poisoned)));
    }
}
