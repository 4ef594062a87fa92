//! k-way merge of contiguous LTX files (docs/ltx-format.md §3.9).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{Read, Write};

use super::{Decoder, Encoder, FLAG_NO_CHECKSUM, Header, LtxError, Trailer};

/// Merges `inputs`, sorted by TXID, into one file written to `out`.
///
/// For every page the image from the newest input holding it wins; pages beyond
/// the last input's Commit are dropped. The output is NoChecksum, takes Commit and
/// Timestamp from the last input, spans the inputs' TXIDs, and has zeroed WAL
/// fields and NodeID, as Litestream's compactor writes it. Every input is fully
/// verified; on any error the bytes already written to `out` must be discarded.
///
/// Memory is one page buffer per input plus the output's page index.
pub fn compact<R: Read, W: Write>(
    inputs: Vec<R>,
    out: W,
) -> Result<(W, Header, Trailer), LtxError> {
    if inputs.is_empty() {
        return Err(LtxError::InvalidArgument(
            "compact needs at least one input".into(),
        ));
    }
    let mut decoders = inputs
        .into_iter()
        .map(Decoder::new)
        .collect::<Result<Vec<_>, _>>()?;
    let header = output_header(decoders.iter().map(|d| *d.header()))?;

    let mut enc = Encoder::new(out, header)?;
    let page_size = header.page_size as usize;
    let mut pages = vec![vec![0u8; page_size]; decoders.len()];

    // Min-heap on (pgno, newest input first) so that the first pop of a page
    // number yields the input whose image wins.
    let mut heap = BinaryHeap::with_capacity(decoders.len());
    for (i, (dec, buf)) in decoders.iter_mut().zip(pages.iter_mut()).enumerate() {
        if let Some(pgno) = dec.next_page(buf)? {
            heap.push(Reverse((pgno, Reverse(i))));
        }
    }
    while let Some(Reverse((pgno, Reverse(i)))) = heap.pop() {
        if pgno <= header.commit {
            enc.write_page(pgno, &pages[i])?;
        }
        advance(&mut decoders[i], &mut pages[i], i, &mut heap)?;
        // Older inputs' images of the same page are superseded.
        while let Some(&Reverse((p, Reverse(j)))) = heap.peek() {
            if p != pgno {
                break;
            }
            heap.pop();
            advance(&mut decoders[j], &mut pages[j], j, &mut heap)?;
        }
    }

    // Verify every input before the output gets its trailer.
    for dec in decoders {
        dec.finish()?;
    }
    let (out, trailer) = enc.finish()?;
    Ok((out, header, trailer))
}

type Heap = BinaryHeap<Reverse<(u32, Reverse<usize>)>>;

fn advance<R: Read>(
    dec: &mut Decoder<R>,
    buf: &mut [u8],
    i: usize,
    heap: &mut Heap,
) -> Result<(), LtxError> {
    if let Some(pgno) = dec.next_page(buf)? {
        heap.push(Reverse((pgno, Reverse(i))));
    }
    Ok(())
}

/// Checks the chain rules and derives the output header.
fn output_header(mut headers: impl Iterator<Item = Header>) -> Result<Header, LtxError> {
    let first = headers
        .next()
        .ok_or_else(|| LtxError::InvalidArgument("compact needs at least one input".into()))?;
    let mut last = first;
    for next in headers {
        if next.page_size != first.page_size {
            return Err(LtxError::PageSizeMismatch {
                expected: first.page_size,
                got: next.page_size,
            });
        }
        if next.min_txid > last.max_txid.saturating_add(1) || next.max_txid <= last.max_txid {
            return Err(LtxError::NotContiguous {
                prev_max_txid: last.max_txid,
                next_min_txid: next.min_txid,
                next_max_txid: next.max_txid,
            });
        }
        last = next;
    }
    Ok(Header {
        flags: FLAG_NO_CHECKSUM,
        page_size: first.page_size,
        commit: last.commit,
        min_txid: first.min_txid,
        max_txid: last.max_txid,
        timestamp_ms: last.timestamp_ms,
        ..Header::default()
    })
}
