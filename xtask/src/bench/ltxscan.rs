//! Which commits an LTX file carries, for the lag measurement.
//!
//! `bench/writer.py` starts every row with [`MARKER`] and the commit counter k
//! (big-endian u64). Both tools write the same LTX format, so decoding a replica file
//! and taking the highest counter in its pages tells, exactly and in the same way for
//! both, the newest commit the file makes restorable.
//!
//! This is a deliberately small reader (no checksum or ordering checks, only the page
//! encoding Litestream 0.5.17 and `replica` write: u32 size + raw LZ4 block) instead of
//! `replica-core`'s decoder, so that xtask (lint, ci) builds even while the engine
//! crates do not.

use anyhow::{Result, bail};

pub const MARKER: [u8; 8] = *b"\xa7RBENCH\x5a";

const HEADER_SIZE: usize = 100;
const PAGE_FLAG_SIZE: u16 = 0x1;

fn be_u32(b: &[u8], at: usize) -> Result<u32> {
    match b.get(at..at + 4) {
        Some(s) => Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]])),
        None => bail!("truncated LTX file"),
    }
}

/// The highest commit counter in the file's pages, `None` if no page has a marker.
pub fn max_counter(b: &[u8]) -> Result<Option<u64>> {
    if b.get(..4) != Some(b"LTX1") {
        bail!("not an LTX file");
    }
    let page_size = be_u32(b, 8)? as usize;
    if !(512..=65536).contains(&page_size) {
        bail!("bad page size {page_size}");
    }
    let mut page = vec![0u8; page_size];
    let mut off = HEADER_SIZE;
    let mut best = None;
    loop {
        let pgno = be_u32(b, off)?;
        let flags = match b.get(off + 4..off + 6) {
            Some(s) => u16::from_be_bytes([s[0], s[1]]),
            None => bail!("truncated LTX file"),
        };
        off += 6;
        if pgno == 0 {
            return Ok(best);
        }
        if flags != PAGE_FLAG_SIZE {
            bail!("page {pgno}: unsupported page encoding {flags:#06x}");
        }
        let size = be_u32(b, off)? as usize;
        off += 4;
        let Some(block) = b.get(off..off + size) else {
            bail!("truncated LTX file");
        };
        off += size;
        let n = lz4_flex::block::decompress_into(block, &mut page)
            .map_err(|e| anyhow::anyhow!("page {pgno}: {e}"))?;
        if n != page_size {
            bail!("page {pgno}: decompressed to {n} bytes");
        }
        if let Some(k) = scan_page(&page) {
            best = Some(best.map_or(k, |b: u64| b.max(k)));
        }
    }
}

fn scan_page(page: &[u8]) -> Option<u64> {
    let mut best = None;
    let mut i = 0;
    while i + 16 <= page.len() {
        match page[i..page.len() - 15]
            .iter()
            .position(|&c| c == MARKER[0])
        {
            None => break,
            Some(p) => {
                let at = i + p;
                if page[at..at + 8] == MARKER {
                    let mut k = [0u8; 8];
                    k.copy_from_slice(&page[at + 8..at + 16]);
                    let k = u64::from_be_bytes(k);
                    best = Some(best.map_or(k, |b: u64| b.max(k)));
                }
                i = at + 1;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_markers() {
        let mut page = vec![0u8; 4096];
        for (at, k) in [(10usize, 5u64), (300, 9), (4080, 7)] {
            page[at..at + 8].copy_from_slice(&MARKER);
            page[at + 8..at + 16].copy_from_slice(&k.to_be_bytes());
        }
        assert_eq!(scan_page(&page), Some(9));
        assert_eq!(scan_page(&[0u8; 4096]), None);

        let block = lz4_flex::block::compress(&page);
        let mut f = vec![0u8; HEADER_SIZE];
        f[..4].copy_from_slice(b"LTX1");
        f[8..12].copy_from_slice(&4096u32.to_be_bytes());
        f.extend_from_slice(&2u32.to_be_bytes());
        f.extend_from_slice(&PAGE_FLAG_SIZE.to_be_bytes());
        f.extend_from_slice(&(block.len() as u32).to_be_bytes());
        f.extend_from_slice(&block);
        f.extend_from_slice(&[0u8; 6]);
        assert_eq!(max_counter(&f).ok().flatten(), Some(9));
    }
}
