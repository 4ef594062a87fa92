//! SQLite WAL reader: parses the `-wal` file of a live database and returns whole committed
//! transactions, following SQLite's own recovery rule (see `docs/sqlite-wal.md`, §1 for the
//! format and §5 for the capture rules that rely on it).
//!
//! Everything here is read-only and positional (`read_at`) on a file handle the caller owns;
//! the caller is responsible for the locking protocol that keeps the frames from being
//! rewound while they are being read. The functions below only *detect* a rewind.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub const WAL_HEADER_SIZE: u64 = 32;
pub const FRAME_HEADER_SIZE: u64 = 24;

const MAGIC_LE: u32 = 0x377f_0682;
const MAGIC_BE: u32 = 0x377f_0683;
const WAL_VERSION: u32 = 3_007_000;
const MIN_PAGE_SIZE: u32 = 512;
const MAX_PAGE_SIZE: u32 = 65_536;

/// Target size of one read while scanning. Large enough that the syscall cost vanishes next to
/// the checksum, small enough not to matter as a per-scan allocation.
const SCAN_CHUNK: u64 = 4 << 20;
/// Frames in a scan's first read; each full read multiplies the next by `CHUNK_GROWTH`, up to
/// `SCAN_CHUNK`. Eight frames hold a typical poll's new commits.
const FIRST_CHUNK_FRAMES: u64 = 8;
const CHUNK_GROWTH: u64 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    pub magic: u32,
    pub version: u32,
    pub page_size: u32,
    pub checkpoint_seq: u32,
    pub salt1: u32,
    pub salt2: u32,
    pub checksum: (u32, u32),
}

impl WalHeader {
    /// None when the bytes are not a valid header (bad magic, version != 3007000, page size
    /// invalid, header checksum mismatch).
    pub fn parse(b: &[u8; 32]) -> Option<WalHeader> {
        let h = WalHeader {
            magic: be32(b, 0),
            version: be32(b, 4),
            page_size: be32(b, 8),
            checkpoint_seq: be32(b, 12),
            salt1: be32(b, 16),
            salt2: be32(b, 20),
            checksum: (be32(b, 24), be32(b, 28)),
        };
        if h.magic != MAGIC_LE && h.magic != MAGIC_BE {
            return None;
        }
        // SQLite's recovery refuses any other version, so a reader must not guess at one.
        if h.version != WAL_VERSION {
            return None;
        }
        if !h.page_size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&h.page_size)
        {
            return None;
        }
        // A torn header (being rewritten at a reset) shows up here, not as an error.
        if checksum(&b[..24], h.big_endian(), (0, 0)) != h.checksum {
            return None;
        }
        Some(h)
    }

    /// Word order of every checksum in this WAL; it is the writer's native order, not the
    /// reader's, so it must come from the magic.
    pub fn big_endian(&self) -> bool {
        self.magic == MAGIC_BE
    }

    pub fn frame_size(&self) -> u64 {
        FRAME_HEADER_SIZE + u64::from(self.page_size)
    }

    fn salts(&self) -> (u32, u32) {
        (self.salt1, self.salt2)
    }

    /// Whether `offset` is the start of a frame (or the end of the last one) in this WAL.
    fn on_frame_boundary(&self, offset: u64) -> bool {
        offset >= WAL_HEADER_SIZE && (offset - WAL_HEADER_SIZE).is_multiple_of(self.frame_size())
    }
}

/// Reads the header at offset 0; Ok(None) if the file is shorter than 32 bytes or the header
/// is invalid (normal right after TRUNCATE).
pub fn read_header(f: &File) -> io::Result<Option<WalHeader>> {
    let mut b = [0u8; WAL_HEADER_SIZE as usize];
    if read_up_to(f, &mut b, 0)? < b.len() {
        return Ok(None);
    }
    Ok(WalHeader::parse(&b))
}

/// A point in one WAL generation: just past the last frame taken, and the running checksum
/// there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WalPosition {
    pub salt1: u32,
    pub salt2: u32,
    pub offset: u64,
    pub checksum: (u32, u32),
}

impl WalPosition {
    /// Start of a generation: offset 32, checksum = header checksum.
    pub fn start(h: &WalHeader) -> WalPosition {
        WalPosition {
            salt1: h.salt1,
            salt2: h.salt2,
            offset: WAL_HEADER_SIZE,
            checksum: h.checksum,
        }
    }

    fn salts(&self) -> (u32, u32) {
        (self.salt1, self.salt2)
    }
}

/// Where the newest committed image of each page lives in the WAL: page number →
/// file offset of its frame (the 24-byte frame header). The one index type of the
/// capture path: a scan builds one, capture's batch and generation absorb them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrameIndex(BTreeMap<u32, u64>);

impl FrameIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes `newer`'s entries, which replace older frames of the same pages. Moves
    /// them without copying when `self` is empty.
    pub fn absorb(&mut self, mut newer: FrameIndex) {
        if self.0.is_empty() {
            self.0 = newer.0;
        } else {
            self.0.append(&mut newer.0);
        }
    }

    /// Drops pages past the end of a database of `db_pages` pages (it shrank).
    pub fn truncate(&mut self, db_pages: u32) {
        self.0.retain(|&pgno, _| pgno <= db_pages);
    }

    fn insert(&mut self, pgno: u32, frame_offset: u64) {
        self.0.insert(pgno, frame_offset);
    }
}

/// Read-only map operations (`get`, `range`, iteration) come from the map itself.
impl std::ops::Deref for FrameIndex {
    type Target = BTreeMap<u32, u64>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl PartialEq<BTreeMap<u32, u64>> for FrameIndex {
    fn eq(&self, other: &BTreeMap<u32, u64>) -> bool {
        self.0 == *other
    }
}

impl IntoIterator for FrameIndex {
    type Item = (u32, u64);
    type IntoIter = std::collections::btree_map::IntoIter<u32, u64>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a FrameIndex {
    type Item = (&'a u32, &'a u64);
    type IntoIter = std::collections::btree_map::Iter<'a, u32, u64>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Result of scanning committed frames after a position.
#[derive(Debug, Clone)]
pub struct Scan {
    /// Position after the last valid COMMIT frame found (== `from` if none).
    pub end: WalPosition,
    /// Database size in pages from the last commit frame, if any commit was found.
    pub db_pages: Option<u32>,
    /// The frame holding the newest committed image of each page in (from, end]. Pages
    /// above `db_pages` (the database shrank) are left out.
    pub pages: FrameIndex,
    /// Number of committed frames taken, and commits (transactions) seen.
    pub frames: u64,
    pub commits: u64,
}

impl Scan {
    fn empty(at: WalPosition) -> Scan {
        Scan {
            end: at,
            db_pages: None,
            pages: FrameIndex::new(),
            frames: 0,
            commits: 0,
        }
    }
}

/// Walks frames from `from` (whose salts must equal `header`'s; otherwise returns an empty scan
/// at `from`) verifying salts, pgno != 0 and the chained checksum seeded from `from.checksum`.
/// It stops at EOF, a partial frame, a salt mismatch, pgno 0 or a checksum mismatch, and
/// returns only whole committed transactions.
///
/// `max_frames` bounds the work: the scan stops at the first commit boundary at which at least
/// that many frames have been taken, so one transaction larger than the bound is still
/// returned whole. `Some(0)` takes nothing.
///
/// `header` is trusted as given: re-reading it and comparing salts before each poll is the
/// caller's job, because only the caller knows whether a rewind was expected.
///
/// Errors: `InvalidInput` if `from.offset` is not on a frame boundary of this WAL.
pub fn scan(
    f: &File,
    header: &WalHeader,
    from: WalPosition,
    max_frames: Option<u64>,
) -> io::Result<Scan> {
    scan_chunked(f, header, from, max_frames, SCAN_CHUNK)
}

/// `scan` with the read size as a parameter, so that tests can force frames and transactions
/// to straddle reads.
fn scan_chunked(
    f: &File,
    header: &WalHeader,
    from: WalPosition,
    max_frames: Option<u64>,
    chunk_bytes: u64,
) -> io::Result<Scan> {
    let mut out = Scan::empty(from);
    if from.salts() != header.salts() || max_frames == Some(0) {
        return Ok(out);
    }
    if !header.on_frame_boundary(from.offset) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "WAL offset {} is not on a frame boundary (page size {})",
                from.offset, header.page_size
            ),
        ));
    }

    let frame_size = header.frame_size();
    let big_endian = header.big_endian();
    let page_size = header.page_size as usize;
    // A bounded scan (under the write barrier) reads no more than it may take.
    let frames_per_chunk = (chunk_bytes / frame_size)
        .min(max_frames.unwrap_or(u64::MAX))
        .max(1);
    // The file length is only a hint for the buffer size: the WAL may grow while we read, and
    // its length never marks the end of the valid frames. After a restart the file still holds
    // an earlier generation's frames up to its old length, so the first read is small and each
    // full one grows the next: a poll that finds one new commit reads a few frames, not
    // megabytes of stale ones (and does not zero a buffer for them).
    let remaining = f.metadata()?.len().saturating_sub(from.offset);
    let mut chunk_frames = remaining
        .div_ceil(frame_size)
        .clamp(1, FIRST_CHUNK_FRAMES.min(frames_per_chunk));
    let mut buf = vec![0u8; usize_from(chunk_frames * frame_size)?];

    let mut running = from.checksum;
    // Frames of the transaction in progress; they become visible only at its commit frame.
    let mut pending: Vec<(u32, u64)> = Vec::new();
    let mut chunk_offset = from.offset;

    'chunks: loop {
        let n = read_up_to(f, &mut buf, chunk_offset)?;
        let whole = n - n % (frame_size as usize);
        for (i, frame) in buf[..whole].chunks_exact(frame_size as usize).enumerate() {
            let frame_offset = chunk_offset + i as u64 * frame_size;
            let (hdr, page) = frame.split_at(FRAME_HEADER_SIZE as usize);
            debug_assert_eq!(page.len(), page_size);
            let pgno = be32(hdr, 0);
            let db_size = be32(hdr, 4);
            if (be32(hdr, 8), be32(hdr, 12)) != header.salts() || pgno == 0 {
                break 'chunks;
            }
            let stored = (be32(hdr, 16), be32(hdr, 20));
            let computed = checksum(page, big_endian, checksum(&hdr[..8], big_endian, running));
            if computed != stored {
                break 'chunks;
            }
            running = stored;
            pending.push((pgno, frame_offset));
            if db_size != 0 {
                out.frames += pending.len() as u64;
                out.commits += 1;
                out.db_pages = Some(db_size);
                for (pgno, offset) in pending.drain(..) {
                    out.pages.insert(pgno, offset);
                }
                out.end = WalPosition {
                    salt1: header.salt1,
                    salt2: header.salt2,
                    offset: frame_offset + frame_size,
                    checksum: stored,
                };
                if max_frames.is_some_and(|m| out.frames >= m) {
                    break 'chunks;
                }
            }
        }
        if n < buf.len() {
            break;
        }
        chunk_offset += whole as u64;
        if chunk_frames < frames_per_chunk {
            chunk_frames = (chunk_frames * CHUNK_GROWTH).min(frames_per_chunk);
            buf.resize(usize_from(chunk_frames * frame_size)?, 0);
        }
    }

    // Only the last commit's size matters: SQLite looks pages up in the WAL regardless of
    // intermediate sizes, so pruning per transaction could drop an image it would still use.
    if let Some(db_size) = out.db_pages {
        out.pages.truncate(db_size);
    }
    Ok(out)
}

/// Reads the page image of the frame at `frame_offset` into `buf` (len == page_size), checking
/// that the frame still carries `header`'s salts. Ok(false) if it does not, or if the WAL is
/// now too short to hold the frame (the WAL was rewound or truncated under us); Ok(true) on
/// success.
///
/// Errors: `InvalidInput` if `buf` is not one page long or `frame_offset` is not the start of a
/// frame.
pub fn read_frame_page(
    f: &File,
    header: &WalHeader,
    frame_offset: u64,
    buf: &mut [u8],
) -> io::Result<bool> {
    if buf.len() != header.page_size as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "page buffer is {} bytes, WAL page size is {}",
                buf.len(),
                header.page_size
            ),
        ));
    }
    if !header.on_frame_boundary(frame_offset) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("WAL offset {frame_offset} is not the start of a frame"),
        ));
    }
    if read_up_to(f, buf, frame_offset + FRAME_HEADER_SIZE)? < buf.len() {
        return Ok(false);
    }
    // The salts are checked *after* the page is read: SQLite writes a frame's header before its
    // page, so old salts seen now prove that the page read just before was not yet overwritten.
    let mut hdr = [0u8; FRAME_HEADER_SIZE as usize];
    if read_up_to(f, &mut hdr, frame_offset)? < hdr.len() {
        return Ok(false);
    }
    Ok((be32(&hdr, 8), be32(&hdr, 12)) == header.salts())
}

/// The checksum stored in the frame that ends at `end_offset` (the frame at
/// `end_offset - frame_size`), if that frame and the header now on disk both still carry
/// `header`'s salts. At offset 32 it is the header's checksum, so that it always agrees with
/// `scan().end.checksum`. Used to prove at start-up that a saved position is still the same
/// WAL; Ok(None) if that cannot be proven (including an offset that is not a frame boundary of
/// this WAL).
pub fn stored_checksum_before(
    f: &File,
    header: &WalHeader,
    end_offset: u64,
) -> io::Result<Option<(u32, u32)>> {
    if !header.on_frame_boundary(end_offset) {
        return Ok(None);
    }
    // The frame alone proves nothing after a rewind: frames past the new generation's end keep
    // the old salts and checksums, so the header on disk must agree as well.
    let Some(current) = read_header(f)? else {
        return Ok(None);
    };
    if current.salts() != header.salts() {
        return Ok(None);
    }
    if end_offset == WAL_HEADER_SIZE {
        return Ok(Some(current.checksum));
    }
    let mut hdr = [0u8; FRAME_HEADER_SIZE as usize];
    if read_up_to(f, &mut hdr, end_offset - header.frame_size())? < hdr.len() {
        return Ok(None);
    }
    if (be32(&hdr, 8), be32(&hdr, 12)) != header.salts() {
        return Ok(None);
    }
    Ok(Some((be32(&hdr, 16), be32(&hdr, 20))))
}

/// SQLite's WAL checksum: pairs of 32-bit words in the writer's byte order, folded into two
/// wrapping accumulators. `data.len()` is always a multiple of 8 for WAL input.
pub(crate) fn checksum(data: &[u8], big_endian: bool, seed: (u32, u32)) -> (u32, u32) {
    // Separate monomorphic loops keep the byte-order choice out of the hot loop.
    if big_endian {
        checksum_words::<true>(data, seed)
    } else {
        checksum_words::<false>(data, seed)
    }
}

fn checksum_words<const BE: bool>(data: &[u8], (mut s0, mut s1): (u32, u32)) -> (u32, u32) {
    let (words, rest) = data.as_chunks::<8>();
    debug_assert!(rest.is_empty());
    for &[a0, a1, a2, a3, b0, b1, b2, b3] in words {
        let (a, b) = if BE {
            (
                u32::from_be_bytes([a0, a1, a2, a3]),
                u32::from_be_bytes([b0, b1, b2, b3]),
            )
        } else {
            (
                u32::from_le_bytes([a0, a1, a2, a3]),
                u32::from_le_bytes([b0, b1, b2, b3]),
            )
        };
        s0 = s0.wrapping_add(a).wrapping_add(s1);
        s1 = s1.wrapping_add(b).wrapping_add(s0);
    }
    (s0, s1)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Fills `buf` from `offset` until it is full or the file ends; returns the bytes read. A short
/// count is the normal way to meet the end of a WAL, so it is not an error here.
fn read_up_to(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn usize_from(n: u64) -> io::Result<usize> {
    usize::try_from(n)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "size overflows usize"))
}

#[cfg(test)]
mod tests;
