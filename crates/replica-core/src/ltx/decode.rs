//! Streaming, strict LTX reader.

use std::io::{BufReader, Read};

use super::checksum::{CHECKSUM_FLAG, FileHasher, page_checksum};
use super::encode::IndexEntry;
use super::legacy::LegacyDecoder;
use super::varint::read_uvarint;
use super::{
    HEADER_SIZE, Header, LtxError, PAGE_FLAG_SIZE, PAGE_HEADER_SIZE, TRAILER_SIZE, Trailer,
    lock_pgno, max_compressed_size, next_snapshot_pgno,
};

/// Batches the many small reads (page headers, size fields, index varints);
/// compaction keeps one decoder per input, so this is kept to one max page.
const READ_BUFFER_SIZE: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pages,
    /// The terminator has been read; the index comes next.
    Index,
    Failed,
}

/// Reads one LTX file page by page without holding the whole file.
///
/// Pages are returned before the FileChecksum can be checked: a consumer must
/// not commit anything until [`finish`](Decoder::finish) succeeded.
///
/// The reader is stricter than Litestream's: pages must be ascending, within
/// Commit, never the lock page, decompress to exactly the page size, and a
/// snapshot must hold every page; the index must describe exactly the frames
/// read; nothing may follow the trailer.
#[derive(Debug)]
pub struct Decoder<R: Read> {
    r: BufReader<R>,
    header: Header,
    page_size: usize,
    lock: u32,
    state: State,
    hasher: FileHasher,
    /// Absolute offset of the next unread byte.
    offset: u64,
    frames: Vec<IndexEntry>,
    last_pgno: u32,
    cbuf: Vec<u8>,
    legacy: Option<LegacyDecoder>,
    /// XOR of page checksums, for checksum-enabled snapshots only.
    rolling: u64,
}

impl<R: Read> Decoder<R> {
    /// Reads and validates the header.
    pub fn new(r: R) -> Result<Self, LtxError> {
        let mut r = BufReader::with_capacity(READ_BUFFER_SIZE, r);
        let mut bytes = [0u8; HEADER_SIZE];
        r.read_exact(&mut bytes)?;
        let header = Header::from_bytes(&bytes)?;
        let mut hasher = FileHasher::new();
        hasher.update(&bytes);
        Ok(Decoder {
            r,
            header,
            page_size: header.page_size as usize,
            lock: lock_pgno(header.page_size),
            state: State::Pages,
            hasher,
            offset: HEADER_SIZE as u64,
            frames: Vec::new(),
            last_pgno: 0,
            cbuf: Vec::new(),
            legacy: None,
            rolling: 0,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Decodes the next page into `buf` (exactly page-size bytes) and returns its
    /// page number, or `None` once the end of the page block is reached.
    pub fn next_page(&mut self, buf: &mut [u8]) -> Result<Option<u32>, LtxError> {
        if buf.len() != self.page_size {
            return Err(LtxError::InvalidArgument(format!(
                "page buffer has {} bytes, page size is {}",
                buf.len(),
                self.page_size
            )));
        }
        match self.state {
            State::Pages => {}
            State::Index => return Ok(None),
            State::Failed => return Err(LtxError::Poisoned),
        }
        let result = self.read_frame(buf);
        if result.is_err() {
            // We may have stopped mid-frame; nothing after this point can be trusted.
            self.state = State::Failed;
        }
        result
    }

    fn read_frame(&mut self, buf: &mut [u8]) -> Result<Option<u32>, LtxError> {
        let mut head = [0u8; PAGE_HEADER_SIZE];
        self.r.read_exact(&mut head)?;
        self.hasher.update(&head);
        let pgno = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let flags = u16::from_be_bytes([head[4], head[5]]);

        if pgno == 0 {
            if flags != 0 {
                return Err(LtxError::page(
                    0,
                    format!("terminator has flags {flags:#06x}"),
                ));
            }
            if self.header.is_snapshot() {
                let expected = next_snapshot_pgno(self.last_pgno, self.lock);
                if expected <= self.header.commit {
                    return Err(LtxError::IncompleteSnapshot {
                        missing_pgno: expected,
                        commit: self.header.commit,
                    });
                }
            }
            self.offset += PAGE_HEADER_SIZE as u64;
            self.state = State::Index;
            return Ok(None);
        }
        self.check_pgno(pgno)?;

        let frame_size = match flags {
            PAGE_FLAG_SIZE => self.read_block(pgno, buf)?,
            0 => {
                let limit = max_compressed_size(self.page_size) + 64;
                let legacy = self.legacy.get_or_insert_with(LegacyDecoder::new);
                PAGE_HEADER_SIZE + legacy.read_page(&mut self.r, buf, limit, pgno)?
            }
            other => {
                return Err(LtxError::page(
                    pgno,
                    format!("unknown page flags {other:#06x}"),
                ));
            }
        };

        self.hasher.update(buf);
        if !self.header.no_checksum() && self.header.is_snapshot() {
            self.rolling ^= page_checksum(pgno, buf);
        }
        self.frames.push(IndexEntry {
            pgno,
            offset: self.offset,
            size: frame_size as u64,
        });
        self.offset += frame_size as u64;
        self.last_pgno = pgno;
        Ok(Some(pgno))
    }

    fn check_pgno(&self, pgno: u32) -> Result<(), LtxError> {
        let h = &self.header;
        if pgno > h.commit {
            return Err(LtxError::page(
                pgno,
                format!("page beyond commit {}", h.commit),
            ));
        }
        if pgno == self.lock {
            return Err(LtxError::page(pgno, "lock page present"));
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

    /// Current encoding: u32 size, then a raw LZ4 block. Returns the frame size.
    fn read_block(&mut self, pgno: u32, buf: &mut [u8]) -> Result<usize, LtxError> {
        let mut size = [0u8; 4];
        self.r.read_exact(&mut size)?;
        self.hasher.update(&size);
        let csize = u32::from_be_bytes(size) as usize;
        let max = max_compressed_size(self.page_size);
        if csize > max {
            return Err(LtxError::page(
                pgno,
                format!("compressed size {csize} exceeds maximum {max}"),
            ));
        }
        if self.cbuf.len() < csize {
            self.cbuf.resize(max, 0);
        }
        let block = &mut self.cbuf[..csize];
        self.r.read_exact(block)?;
        let n = lz4_flex::block::decompress_into(block, buf)
            .map_err(|e| LtxError::page(pgno, format!("LZ4 block: {e}")))?;
        if n != self.page_size {
            return Err(LtxError::page(
                pgno,
                format!(
                    "LZ4 block decompressed to {n} bytes, page size is {}",
                    self.page_size
                ),
            ));
        }
        Ok(PAGE_HEADER_SIZE + 4 + csize)
    }

    /// Reads any remaining pages, then the page index and trailer, and verifies
    /// the index against the frames read, the FileChecksum and, for
    /// checksum-enabled snapshots, the post-apply checksum.
    pub fn finish(mut self) -> Result<Trailer, LtxError> {
        if self.state == State::Pages {
            let mut scratch = vec![0u8; self.page_size];
            while self.next_page(&mut scratch)?.is_some() {}
        }
        if self.state == State::Failed {
            return Err(LtxError::Poisoned);
        }

        let mut raw = Vec::new();
        for (i, entry) in self.frames.iter().enumerate() {
            let pgno = read_uvarint(&mut self.r, &mut raw)?;
            if pgno == 0 {
                return Err(LtxError::InvalidIndex(format!(
                    "index has {i} entries, file has {} frames",
                    self.frames.len()
                )));
            }
            let offset = read_uvarint(&mut self.r, &mut raw)?;
            let size = read_uvarint(&mut self.r, &mut raw)?;
            if (pgno, offset, size) != (u64::from(entry.pgno), entry.offset, entry.size) {
                return Err(LtxError::InvalidIndex(format!(
                    "entry {i} is (pgno {pgno}, offset {offset}, size {size}) but the frame \
                     is (pgno {}, offset {}, size {})",
                    entry.pgno, entry.offset, entry.size
                )));
            }
        }
        if read_uvarint(&mut self.r, &mut raw)? != 0 {
            return Err(LtxError::InvalidIndex(format!(
                "index has more entries than the {} frames",
                self.frames.len()
            )));
        }
        let mut index_size = [0u8; 8];
        self.r.read_exact(&mut index_size)?;
        let stored_size = u64::from_be_bytes(index_size);
        if stored_size != raw.len() as u64 {
            return Err(LtxError::InvalidIndex(format!(
                "index size field says {stored_size}, index has {} bytes",
                raw.len()
            )));
        }
        self.hasher.update(&raw);
        self.hasher.update(&index_size);

        let mut tb = [0u8; TRAILER_SIZE];
        self.r.read_exact(&mut tb)?;
        self.hasher.update(&tb[..8]);
        let trailer = Trailer::from_bytes(&tb);
        let computed = self.hasher.file_checksum();
        if trailer.file_checksum != computed {
            return Err(LtxError::ChecksumMismatch {
                stored: trailer.file_checksum,
                computed,
            });
        }
        trailer.validate(&self.header)?;
        if !self.header.no_checksum() && self.header.is_snapshot() {
            let computed = CHECKSUM_FLAG | self.rolling;
            if trailer.post_apply_checksum != computed {
                return Err(LtxError::PostApplyChecksumMismatch {
                    stored: trailer.post_apply_checksum,
                    computed,
                });
            }
        }

        if !at_eof(&mut self.r)? {
            return Err(LtxError::InvalidTrailer("data after the trailer".into()));
        }
        Ok(trailer)
    }
}

fn at_eof<R: Read>(r: &mut R) -> Result<bool, LtxError> {
    let mut extra = [0u8; 1];
    loop {
        match r.read(&mut extra) {
            Ok(n) => return Ok(n == 0),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}
