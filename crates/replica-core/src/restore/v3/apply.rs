//! Rebuilding a database from 0.3 objects: the snapshot (an LZ4 frame holding the
//! whole database file) written into the work file, then each WAL index's segments (LZ4
//! frames holding consecutive byte ranges of one WAL file) replayed in order.
//!
//! 0.3 replays by renaming each WAL beside the database and letting SQLite checkpoint
//! it, which silently stops at the first bad frame. Here every frame is checked (salts
//! and the chained checksum from the WAL header on), whole committed transactions are
//! written, and anything that does not verify is an error naming the object, so a
//! damaged replica never turns into an older database that looks fine.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::V3Error;
use super::layout::{self, GenerationId};
use super::store::Segment;
use crate::wal::{self, FRAME_HEADER_SIZE, WAL_HEADER_SIZE, WalHeader};

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
const LZ4_FRAME_MAGIC: u32 = 0x184D_2204;

/// Follows the structure of LZ4 frames as their bytes go by, so that a stream cut at a
/// block boundary (which a frame decoder takes for a clean end) is caught: the stream
/// is complete only between frames, after at least one.
#[derive(Debug)]
struct FrameWalk {
    part: Part,
    field: Vec<u8>,
    want: usize,
    skip: u64,
    block_checksum: bool,
    content_checksum: bool,
    frames: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Magic,
    Flags,
    DescriptorRest,
    BlockSize,
    BlockBody,
    ContentChecksum,
}

impl FrameWalk {
    fn new() -> Self {
        Self {
            part: Part::Magic,
            field: Vec::with_capacity(16),
            want: 4,
            skip: 0,
            block_checksum: false,
            content_checksum: false,
            frames: 0,
        }
    }

    fn complete(&self) -> bool {
        self.part == Part::Magic && self.field.is_empty() && self.frames > 0
    }

    fn expect(&mut self, part: Part, want: usize) {
        self.part = part;
        self.want = want;
        self.field.clear();
    }

    fn feed(&mut self, mut b: &[u8]) -> Result<(), String> {
        while !b.is_empty() {
            if self.skip > 0 {
                let n = (b.len() as u64).min(self.skip);
                self.skip -= n;
                b = &b[n as usize..];
                if self.skip == 0 {
                    match self.part {
                        Part::ContentChecksum => self.end_frame(),
                        _ => self.expect(Part::BlockSize, 4),
                    }
                }
                continue;
            }
            let n = (self.want - self.field.len()).min(b.len());
            self.field.extend_from_slice(&b[..n]);
            b = &b[n..];
            if self.field.len() == self.want {
                self.field_done()?;
            }
        }
        Ok(())
    }

    fn field_done(&mut self) -> Result<(), String> {
        let f = &self.field;
        match self.part {
            Part::Magic => {
                let m = u32::from_le_bytes([f[0], f[1], f[2], f[3]]);
                if m != LZ4_FRAME_MAGIC {
                    return Err(format!("not an LZ4 frame (magic {m:#010x})"));
                }
                self.expect(Part::Flags, 2);
            }
            Part::Flags => {
                let flg = f[0];
                if flg >> 6 != 1 {
                    return Err(format!("unsupported LZ4 frame version in flags {flg:#04x}"));
                }
                self.block_checksum = flg & 0x10 != 0;
                self.content_checksum = flg & 0x04 != 0;
                let rest =
                    1 + if flg & 0x08 != 0 { 8 } else { 0 } + if flg & 0x01 != 0 { 4 } else { 0 };
                self.expect(Part::DescriptorRest, rest);
            }
            Part::DescriptorRest => self.expect(Part::BlockSize, 4),
            Part::BlockSize => {
                let v = u32::from_le_bytes([f[0], f[1], f[2], f[3]]);
                if v == 0 {
                    if self.content_checksum {
                        self.part = Part::ContentChecksum;
                        self.field.clear();
                        self.skip = 4;
                    } else {
                        self.end_frame();
                    }
                } else {
                    self.part = Part::BlockBody;
                    self.field.clear();
                    self.skip =
                        u64::from(v & 0x7fff_ffff) + if self.block_checksum { 4 } else { 0 };
                }
            }
            // Bodies and checksums are skipped, never collected.
            Part::BlockBody | Part::ContentChecksum => {}
        }
        Ok(())
    }

    fn end_frame(&mut self) {
        self.frames += 1;
        self.expect(Part::Magic, 4);
    }
}

/// The compressed bytes of one object, watched by a [`FrameWalk`].
struct Walked<R> {
    inner: R,
    walk: FrameWalk,
    compressed: u64,
}

impl<R: Read> Read for Walked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.compressed += n as u64;
        self.walk
            .feed(&buf[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(n)
    }
}

/// An object's decompressed content, which fails at its end unless the LZ4 stream
/// ended with a complete frame.
/// Its errors do not name the object: the caller does.
pub(super) struct Lz4Object<R: Read> {
    dec: lz4_flex::frame::FrameDecoder<Walked<R>>,
}

impl<R: Read> Lz4Object<R> {
    pub(super) fn new(src: R) -> Self {
        Self {
            dec: lz4_flex::frame::FrameDecoder::new(Walked {
                inner: src,
                walk: FrameWalk::new(),
                compressed: 0,
            }),
        }
    }

    pub(super) fn compressed_bytes(&self) -> u64 {
        self.dec.get_ref().compressed
    }

    pub(super) fn into_inner(self) -> R {
        self.dec.into_inner().inner
    }
}

impl<R: Read> Read for Lz4Object<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.dec.read(buf)?;
        if n == 0 && !buf.is_empty() {
            if !self.dec.get_ref().walk.complete() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the LZ4 frame is truncated",
                ));
            }
            // 0.3 writes one frame per object; bytes after it are not ours to ignore.
            let mut probe = [0u8; 1];
            if read_full(&mut self.dec.get_mut().inner, &mut probe)? != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "data follows the LZ4 frame",
                ));
            }
        }
        Ok(n)
    }
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
fn read_full(src: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn corrupt(key: &str, detail: impl Into<String>) -> V3Error {
    V3Error::Corrupt {
        key: key.to_owned(),
        detail: detail.into(),
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> V3Error + '_ {
    move |source| V3Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a snapshot's content into `db` and checks that it is a SQLite database.
/// Returns its page size. Read errors come back as `Err(io)` for the caller to
/// attribute (a broken GET or a damaged object).
pub(super) fn apply_snapshot<R: Read>(
    src: &mut Lz4Object<R>,
    key: &str,
    db: &File,
    db_path: &Path,
) -> Result<Result<u32, io::Error>, V3Error> {
    const CHUNK: usize = 4 << 20;
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    let mut header = [0u8; 100];
    loop {
        let n = match read_full(src, &mut buf) {
            Ok(n) => n,
            Err(e) => return Ok(Err(e)),
        };
        if n == 0 {
            break;
        }
        if at == 0 {
            let h = n.min(header.len());
            header[..h].copy_from_slice(&buf[..h]);
        }
        db.write_all_at(&buf[..n], at).map_err(io_at(db_path))?;
        at += n as u64;
    }
    if at < header.len() as u64 || &header[..16] != SQLITE_MAGIC {
        return Err(corrupt(key, "the snapshot is not a SQLite database"));
    }
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n => u32::from(n),
    };
    if !page_size.is_power_of_two() || page_size < 512 {
        return Err(corrupt(
            key,
            format!("the snapshot's header gives page size {page_size}"),
        ));
    }
    if !at.is_multiple_of(u64::from(page_size)) {
        return Err(corrupt(
            key,
            format!("the snapshot is {at} bytes, not a whole number of {page_size}-byte pages"),
        ));
    }
    Ok(Ok(page_size))
}

/// Replays one WAL index, segment after segment, onto the database file.
pub(super) struct WalReplay<'a> {
    generation: GenerationId,
    index: u32,
    db: &'a File,
    db_path: &'a Path,
    page_size: u32,
    header: Option<WalHeader>,
    checksum: (u32, u32),
    /// The WAL offset the next segment must start at.
    next_offset: u64,
    /// Frames of the transaction not yet committed, parked in a scratch file: a
    /// transaction is written to the database only once its commit frame verified.
    pending: Vec<u32>,
    scratch: File,
    scratch_path: PathBuf,
    /// Frames (and their segment) after the last commit, if any.
    uncommitted_since: Option<String>,
}

impl<'a> WalReplay<'a> {
    pub(super) fn new(
        generation: GenerationId,
        index: u32,
        db: &'a File,
        db_path: &'a Path,
        page_size: u32,
        scratch_path: PathBuf,
    ) -> Result<Self, V3Error> {
        let scratch = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&scratch_path)
            .map_err(io_at(&scratch_path))?;
        Ok(Self {
            generation,
            index,
            db,
            db_path,
            page_size,
            header: None,
            checksum: (0, 0),
            next_offset: 0,
            pending: Vec::new(),
            scratch,
            scratch_path,
            uncommitted_since: None,
        })
    }

    /// Applies one segment. A read error is returned as `Ok(Err(io))` for the caller
    /// to attribute; everything that is wrong with the content is a [`V3Error`].
    pub(super) fn segment<R: Read>(
        &mut self,
        seg: &Segment,
        src: &mut Lz4Object<R>,
    ) -> Result<Result<(), io::Error>, V3Error> {
        let key = seg.key.as_str();
        if u64::from(seg.offset) != self.next_offset {
            let missing = u32::try_from(self.next_offset)
                .map(|o| layout::wal_segment_key(self.generation, self.index, o))
                .unwrap_or_else(|_| {
                    format!("{}wal/{:08x}_…", self.generation.prefix(), self.index)
                });
            return Err(V3Error::MissingSegment {
                key: missing,
                detail: format!(
                    "{key} starts at WAL offset {} but the segments before it end at {}",
                    seg.offset, self.next_offset
                ),
            });
        }
        let mut start = self.next_offset;
        if self.header.is_none() {
            let mut b = [0u8; WAL_HEADER_SIZE as usize];
            match read_full(src, &mut b) {
                Ok(n) if n == b.len() => {}
                Ok(n) => {
                    return Err(corrupt(
                        key,
                        format!("holds {n} bytes, less than a WAL header"),
                    ));
                }
                Err(e) => return Ok(Err(e)),
            }
            let h = WalHeader::parse(&b)
                .ok_or_else(|| corrupt(key, "does not start with a valid WAL header"))?;
            if h.page_size != self.page_size {
                return Err(corrupt(
                    key,
                    format!(
                        "WAL page size {} differs from the snapshot's {}",
                        h.page_size, self.page_size
                    ),
                ));
            }
            self.checksum = h.checksum;
            self.header = Some(h);
            start += WAL_HEADER_SIZE;
        }
        let Some(h) = self.header else {
            return Err(corrupt(key, "no WAL header"));
        };
        let frame_size = h.frame_size() as usize;
        let ps = u64::from(self.page_size);
        let mut frame = vec![0u8; frame_size];
        let mut offset = start;
        loop {
            let n = match read_full(src, &mut frame) {
                Ok(n) => n,
                Err(e) => return Ok(Err(e)),
            };
            if n == 0 {
                break;
            }
            if n < frame_size {
                return Err(corrupt(
                    key,
                    format!(
                        "ends inside the frame at WAL offset {offset} ({n} of {frame_size} bytes)"
                    ),
                ));
            }
            let be32 =
                |i: usize| u32::from_be_bytes([frame[i], frame[i + 1], frame[i + 2], frame[i + 3]]);
            let (pgno, commit, salt1, salt2) = (be32(0), be32(4), be32(8), be32(12));
            if (salt1, salt2) != (h.salt1, h.salt2) {
                return Err(corrupt(
                    key,
                    format!(
                        "the frame at WAL offset {offset} has salts {salt1:08x}/{salt2:08x}, the WAL header {:08x}/{:08x}",
                        h.salt1, h.salt2
                    ),
                ));
            }
            let fh = FRAME_HEADER_SIZE as usize;
            let c = wal::checksum(&frame[..8], h.big_endian(), self.checksum);
            let c = wal::checksum(&frame[fh..], h.big_endian(), c);
            if c != (be32(16), be32(20)) {
                return Err(corrupt(
                    key,
                    format!("the frame at WAL offset {offset} fails its checksum"),
                ));
            }
            if pgno == 0 {
                return Err(corrupt(
                    key,
                    format!("the frame at WAL offset {offset} has page number 0"),
                ));
            }
            self.checksum = c;
            let slot = self.pending.len() as u64;
            self.scratch
                .write_all_at(&frame[fh..], slot * ps)
                .map_err(io_at(&self.scratch_path))?;
            self.pending.push(pgno);
            if self.uncommitted_since.is_none() {
                self.uncommitted_since = Some(key.to_owned());
            }
            if commit != 0 {
                self.commit(commit)?;
            }
            offset += frame_size as u64;
        }
        self.next_offset = offset;
        Ok(Ok(()))
    }

    fn commit(&mut self, pages: u32) -> Result<(), V3Error> {
        let ps = u64::from(self.page_size);
        let mut page = vec![0u8; self.page_size as usize];
        for (slot, pgno) in self.pending.iter().enumerate() {
            self.scratch
                .read_exact_at(&mut page, slot as u64 * ps)
                .map_err(io_at(&self.scratch_path))?;
            self.db
                .write_all_at(&page, u64::from(pgno - 1) * ps)
                .map_err(io_at(self.db_path))?;
        }
        self.db
            .set_len(u64::from(pages) * ps)
            .map_err(io_at(self.db_path))?;
        self.pending.clear();
        self.uncommitted_since = None;
        Ok(())
    }

    /// Ends the index. 0.3 uploads only committed frames, so frames after the last
    /// commit mean the index was cut short.
    pub(super) fn finish(self) -> Result<(), V3Error> {
        let _ = std::fs::remove_file(&self.scratch_path);
        match self.uncommitted_since {
            None => Ok(()),
            Some(key) => Err(corrupt(
                &key,
                format!(
                    "WAL index {:08x} ends with {} frame(s) of a transaction that never commits",
                    self.index,
                    self.pending.len()
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    const PS: u32 = 512;
    const SALTS: (u32, u32) = (0x1111_2222, 0x3333_4444);

    /// A little-endian WAL: header, then `frames` of (pgno, commit, fill byte).
    fn wal(frames: &[(u32, u32, u8)]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in [0x377f_0682u32, 3_007_000, PS, 0, SALTS.0, SALTS.1] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        let mut c = wal::checksum(&out, false, (0, 0));
        out.extend_from_slice(&c.0.to_be_bytes());
        out.extend_from_slice(&c.1.to_be_bytes());
        for &(pgno, commit, fill) in frames {
            let mut fh = Vec::new();
            for v in [pgno, commit, SALTS.0, SALTS.1] {
                fh.extend_from_slice(&v.to_be_bytes());
            }
            let page = vec![fill; PS as usize];
            c = wal::checksum(&fh[..8], false, c);
            c = wal::checksum(&page, false, c);
            fh.extend_from_slice(&c.0.to_be_bytes());
            fh.extend_from_slice(&c.1.to_be_bytes());
            out.extend_from_slice(&fh);
            out.extend_from_slice(&page);
        }
        out
    }

    fn seg(index: u32, offset: u32) -> Segment {
        Segment {
            index,
            offset,
            key: layout::wal_segment_key(GenerationId(1), index, offset),
            size: 0,
            modified: UNIX_EPOCH,
        }
    }

    /// Replays `parts` (WAL byte ranges as segments) onto a 2-page database of zeros.
    fn replay(parts: &[(u32, &[u8])]) -> Result<Vec<u8>, V3Error> {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("db");
        let db = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&db_path)
            .unwrap();
        db.set_len(2 * u64::from(PS)).unwrap();
        let mut r = WalReplay::new(GenerationId(1), 0, &db, &db_path, PS, dir.path().join("s"))?;
        for (offset, bytes) in parts {
            let f = frame(bytes);
            let mut obj = Lz4Object::new(&f[..]);
            r.segment(&seg(0, *offset), &mut obj)?.unwrap();
        }
        r.finish()?;
        Ok(std::fs::read(&db_path).unwrap())
    }

    #[test]
    fn committed_transactions_are_written_across_segments() {
        let w = wal(&[(1, 0, 0xa1), (3, 3, 0xa3), (2, 0, 0xb2), (1, 2, 0xb1)]);
        let cut = 32 + 2 * (24 + PS as usize);
        let db = replay(&[(0, &w[..cut]), (cut as u32, &w[cut..])]).unwrap();
        // The second transaction shrank the database to 2 pages.
        assert_eq!(db.len(), 2 * PS as usize);
        assert!(db[..PS as usize].iter().all(|b| *b == 0xb1));
        assert!(db[PS as usize..].iter().all(|b| *b == 0xb2));
    }

    #[test]
    fn damage_is_refused() {
        let w = wal(&[(1, 0, 0xa1), (2, 2, 0xa2), (1, 2, 0xc1)]);
        let frame_size = 24 + PS as usize;
        // A flipped page byte breaks the checksum chain.
        let mut bad = w.clone();
        bad[32 + frame_size + 24 + 7] ^= 1;
        let err = replay(&[(0, &bad)]).unwrap_err();
        assert!(err.to_string().contains("fails its checksum"), "{err}");
        // A frame of another WAL generation.
        let mut bad = w.clone();
        bad[32 + 8] ^= 1;
        let err = replay(&[(0, &bad)]).unwrap_err();
        assert!(err.to_string().contains("salts"), "{err}");
        // A segment missing between two others.
        let cut = 32 + frame_size;
        let err = replay(&[
            (0, &w[..cut]),
            ((cut + frame_size) as u32, &w[cut + frame_size..]),
        ])
        .unwrap_err();
        assert!(
            err.to_string()
                .contains(&layout::wal_segment_key(GenerationId(1), 0, cut as u32)),
            "{err}"
        );
        // An index ending inside a transaction.
        let err = replay(&[(0, &w[..cut])]).unwrap_err();
        assert!(err.to_string().contains("never commits"), "{err}");
        // A partial frame.
        let err = replay(&[(0, &w[..cut + 100])]).unwrap_err();
        assert!(err.to_string().contains("ends inside the frame"), "{err}");
    }

    fn frame(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = lz4_flex::frame::FrameEncoder::new(&mut out);
        io::Write::write_all(&mut enc, data).unwrap();
        enc.finish().unwrap();
        out
    }

    fn decode(bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut obj = Lz4Object::new(bytes);
        let mut out = Vec::new();
        obj.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn whole_frames_decode_and_truncated_ones_fail() {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let f = frame(&data);
        assert_eq!(decode(&f).unwrap(), data);
        // Every cut fails, including those at a block boundary and just before the end
        // mark, which a frame decoder alone accepts.
        for cut in [
            0,
            3,
            7,
            11,
            f.len() / 2,
            f.len() - 8,
            f.len() - 4,
            f.len() - 1,
        ] {
            assert!(decode(&f[..cut]).is_err(), "cut at {cut} of {}", f.len());
        }
        let mut two = f.clone();
        two.extend_from_slice(&frame(b"more"));
        assert!(decode(&two).is_err(), "a second frame is not 0.3's");
        assert!(decode(b"not lz4 at all").is_err());
    }
}
