//! Which commits an LTX file carries, for the lag measurement.
//!
//! `bench/writer.py` starts every row with [`MARKER`] and the commit counter k
//! (big-endian u64). Both tools write the same LTX format, so decoding a replica file
//! and taking the highest counter in its pages tells, exactly and in the same way for
//! both, the newest commit the file makes restorable.
//!
//! Files are read with `replica-core`'s decoder, the one restore uses: both page
//! encodings, strict checks, and the file checksum verified before a counter counts.

use anyhow::{Context, Result};
use replica_core::ltx::Decoder;

pub const MARKER: [u8; 8] = *b"\xa7RBENCH\x5a";

/// The highest commit counter in the file's pages, `None` if no page has a marker.
pub fn max_counter(b: &[u8]) -> Result<Option<u64>> {
    let mut dec = Decoder::new(b).context("reading the LTX header")?;
    let mut page = vec![0u8; dec.header().page_size as usize];
    let mut best = None;
    while dec
        .next_page(&mut page)
        .context("decoding an LTX page")?
        .is_some()
    {
        if let Some(k) = scan_page(&page) {
            best = Some(best.map_or(k, |b: u64| b.max(k)));
        }
    }
    dec.finish().context("verifying the LTX file")?;
    Ok(best)
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

        let header = replica_core::ltx::Header {
            flags: replica_core::ltx::FLAG_NO_CHECKSUM,
            page_size: 4096,
            commit: 3,
            min_txid: 2,
            max_txid: 2,
            timestamp_ms: 1,
            ..Default::default()
        };
        let mut enc = replica_core::ltx::Encoder::new(Vec::new(), header).unwrap();
        enc.write_page(2, &page).unwrap();
        let (mut f, _) = enc.finish().unwrap();
        assert_eq!(max_counter(&f).ok().flatten(), Some(9));

        // A damaged file is an error, not a smaller counter.
        let last = f.len() - 1;
        f[last] ^= 1;
        assert!(max_counter(&f).is_err());
    }
}
