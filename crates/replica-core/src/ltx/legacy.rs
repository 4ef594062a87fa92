//! The legacy page encoding (page flags `0x0000`, Litestream ≤ 0.5.15): the page
//! data is one complete LZ4 *frame* with no length prefix.
//!
//! The frame has to be delimited by parsing its structure, because reading
//! through a frame decoder straight from the file could consume bytes of the
//! next page header. [`read_frame`] walks the frame header and block sizes and
//! copies exactly the frame's bytes; [`LegacyDecoder`] then decompresses that
//! bounded buffer with lz4_flex's frame decoder, which also checks the header
//! and content xxHash32 checksums.

use std::io::{Cursor, Read};

use lz4_flex::frame::FrameDecoder;

use super::LtxError;

const FRAME_MAGIC: u32 = 0x184D_2204;
const FLG_VERSION_MASK: u8 = 0b1100_0000;
const FLG_VERSION_01: u8 = 0b0100_0000;
const FLG_BLOCK_CHECKSUM: u8 = 0b0001_0000;
const FLG_CONTENT_SIZE: u8 = 0b0000_1000;
const FLG_CONTENT_CHECKSUM: u8 = 0b0000_0100;
const FLG_DICT_ID: u8 = 0b0000_0001;
const BLOCK_UNCOMPRESSED_BIT: u32 = 0x8000_0000;

/// Copies one LZ4 frame from `r` into `out` (cleared first), reading nothing past
/// its end. `limit` caps the frame's total size so that a corrupt size field
/// cannot make us buffer an arbitrary amount.
pub(crate) fn read_frame<R: Read>(
    r: &mut R,
    out: &mut Vec<u8>,
    limit: usize,
    pgno: u32,
) -> Result<(), LtxError> {
    out.clear();
    let bad = |reason: String| LtxError::page(pgno, format!("legacy LZ4 frame: {reason}"));

    read_into(r, out, 6)?;
    let magic = u32::from_le_bytes([out[0], out[1], out[2], out[3]]);
    if magic != FRAME_MAGIC {
        return Err(bad(format!("bad magic {magic:#010x}")));
    }
    let (flg, bd) = (out[4], out[5]);
    if flg & FLG_VERSION_MASK != FLG_VERSION_01 {
        return Err(bad(format!("unsupported version in FLG {flg:#04x}")));
    }
    if flg & FLG_DICT_ID != 0 {
        return Err(bad("dictionary frames are not supported".into()));
    }
    let max_block = match (bd >> 4) & 0x7 {
        4 => 64 << 10,
        5 => 256 << 10,
        6 => 1 << 20,
        7 => 4 << 20,
        other => return Err(bad(format!("invalid block size code {other}"))),
    };
    // Optional content size, then the header checksum byte.
    let descriptor_rest = if flg & FLG_CONTENT_SIZE != 0 { 9 } else { 1 };
    read_into(r, out, descriptor_rest)?;

    let block_checksum = if flg & FLG_BLOCK_CHECKSUM != 0 { 4 } else { 0 };
    loop {
        let at = out.len();
        read_into(r, out, 4)?;
        let word = u32::from_le_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]);
        if word == 0 {
            break;
        }
        let len = (word & !BLOCK_UNCOMPRESSED_BIT) as usize;
        if len > max_block {
            return Err(bad(format!(
                "block of {len} bytes exceeds maximum {max_block}"
            )));
        }
        let need = len + block_checksum;
        if out.len() + need > limit {
            return Err(bad(format!("frame larger than {limit} bytes")));
        }
        read_into(r, out, need)?;
    }
    if flg & FLG_CONTENT_CHECKSUM != 0 {
        read_into(r, out, 4)?;
    }
    Ok(())
}

/// Appends exactly `n` bytes from `r` to `out`.
fn read_into<R: Read>(r: &mut R, out: &mut Vec<u8>, n: usize) -> Result<(), LtxError> {
    let start = out.len();
    out.resize(start + n, 0);
    r.read_exact(&mut out[start..])?;
    Ok(())
}

/// Decompresses delimited legacy frames, reusing the frame decoder's buffers
/// across pages.
#[derive(Debug)]
pub(crate) struct LegacyDecoder {
    dec: FrameDecoder<Cursor<Vec<u8>>>,
}

impl LegacyDecoder {
    pub(crate) fn new() -> Self {
        LegacyDecoder {
            dec: FrameDecoder::new(Cursor::new(Vec::new())),
        }
    }

    /// Reads one frame from `r` and decompresses it into `page`, which it must
    /// fill exactly. Returns the frame's size in bytes.
    pub(crate) fn read_page<R: Read>(
        &mut self,
        r: &mut R,
        page: &mut [u8],
        limit: usize,
        pgno: u32,
    ) -> Result<usize, LtxError> {
        let cursor = self.dec.get_mut();
        cursor.set_position(0);
        read_frame(r, cursor.get_mut(), limit, pgno)?;
        let frame_len = cursor.get_ref().len();

        let bad = |reason: String| LtxError::page(pgno, format!("legacy LZ4 frame: {reason}"));
        self.dec
            .read_exact(page)
            .map_err(|e| bad(format!("decompression failed or too short: {e}")))?;
        // The next read crosses the EndMark, which verifies the content checksum,
        // and must produce nothing more.
        let mut extra = [0u8; 1];
        match self.dec.read(&mut extra) {
            Ok(0) => {}
            Ok(_) => return Err(bad("decompresses to more than the page size".into())),
            Err(e) => return Err(bad(e.to_string())),
        }
        // An empty block reads like end-of-stream to the frame decoder; make sure
        // it really consumed the whole frame.
        if self.dec.get_ref().position() != frame_len as u64 {
            return Err(bad("frame not fully consumed".into()));
        }
        Ok(frame_len)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};

    use super::*;

    /// A frame shaped like the ones pierrec/lz4 wrote for Litestream ≤ 0.5.15.
    pub(crate) fn legacy_frame(page: &[u8]) -> Vec<u8> {
        let info = FrameInfo::new()
            .block_size(BlockSize::Max64KB)
            .block_mode(BlockMode::Independent)
            .content_checksum(true);
        let mut enc = FrameEncoder::with_frame_info(info, Vec::new());
        enc.write_all(page).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn frame_layout_matches_litestream_0_5_15() {
        let f = legacy_frame(&[7u8; 4096]);
        assert_eq!(&f[..6], &[0x04, 0x22, 0x4d, 0x18, 0x64, 0x40]);
    }

    #[test]
    fn delimits_frame_without_over_reading() {
        for page in [
            vec![0u8; 4096],
            (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ] {
            let f = legacy_frame(&page);
            let mut stream = f.clone();
            stream.extend_from_slice(b"NEXT");
            let mut r = &stream[..];
            let mut d = LegacyDecoder::new();
            let mut out = vec![0u8; 4096];
            assert_eq!(d.read_page(&mut r, &mut out, 1 << 20, 1).unwrap(), f.len());
            assert_eq!(out, page);
            assert_eq!(r, b"NEXT");
        }
    }

    #[test]
    fn rejects_wrong_length_and_bad_checksum() {
        let f = legacy_frame(&[3u8; 512]);
        let mut d = LegacyDecoder::new();
        let mut big = vec![0u8; 1024];
        assert!(d.read_page(&mut &f[..], &mut big, 1 << 20, 1).is_err());

        let mut d = LegacyDecoder::new();
        let mut small = vec![0u8; 256];
        assert!(d.read_page(&mut &f[..], &mut small, 1 << 20, 1).is_err());

        let mut bad = f.clone();
        let n = bad.len();
        bad[n - 1] ^= 1; // content checksum
        let mut d = LegacyDecoder::new();
        let mut page = vec![0u8; 512];
        assert!(d.read_page(&mut &bad[..], &mut page, 1 << 20, 1).is_err());
    }

    #[test]
    fn rejects_oversized_frame() {
        let f = legacy_frame(&[3u8; 512]);
        let mut d = LegacyDecoder::new();
        let mut page = vec![0u8; 512];
        assert!(d.read_page(&mut &f[..], &mut page, 8, 1).is_err());
    }
}
