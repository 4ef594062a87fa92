//! Cross-module tests: real-file vector, round trips, legacy frames, corruption,
//! strictness and compaction.

use std::io::Write;

use super::checksum::{CHECKSUM_FLAG, FileHasher, database_checksum};
use super::*;

// ---------------------------------------------------------------------------
// helpers

/// Deterministic splitmix64, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn random_page(rng: &mut Rng, page_size: u32) -> Vec<u8> {
    let mut p = vec![0u8; page_size as usize];
    rng.fill(&mut p);
    p
}

/// Mostly zeros with a recognisable stamp: compresses well, still unique per page.
fn stamped_page(pgno: u32, tag: u8, page_size: u32) -> Vec<u8> {
    let mut p = vec![0u8; page_size as usize];
    p[0..4].copy_from_slice(&pgno.to_be_bytes());
    p[4] = tag;
    let n = p.len();
    p[n - 4..].copy_from_slice(&pgno.to_le_bytes());
    p
}

fn header(min: u64, max: u64, commit: u32, page_size: u32) -> Header {
    Header {
        flags: FLAG_NO_CHECKSUM,
        page_size,
        commit,
        min_txid: min,
        max_txid: max,
        timestamp_ms: 1_700_000_000_000 + max as i64,
        wal_offset: 32,
        wal_size: i64::from(page_size) + 24,
        wal_salt1: 0x1234,
        wal_salt2: 0x5678,
        ..Header::default()
    }
}

type Pages = Vec<(u32, Vec<u8>)>;

fn encode(h: Header, pages: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new(), h).unwrap();
    for (pgno, data) in pages {
        e.write_page(*pgno, data).unwrap();
    }
    let (out, trailer) = e.finish().unwrap();
    assert_eq!(&out[out.len() - 8..], &trailer.file_checksum.to_be_bytes());
    out
}

fn decode_all(bytes: &[u8]) -> Result<(Header, Pages, Trailer), LtxError> {
    let mut d = Decoder::new(bytes)?;
    let h = *d.header();
    let mut buf = vec![0u8; h.page_size as usize];
    let mut pages = Vec::new();
    while let Some(pgno) = d.next_page(&mut buf)? {
        pages.push((pgno, buf.clone()));
    }
    assert_eq!(d.next_page(&mut buf)?, None, "stays at the terminator");
    let t = d.finish()?;
    Ok((h, pages, t))
}

/// A page frame as it sits on disk, for files built by hand.
struct RawFrame {
    pgno: u32,
    flags: u16,
    /// Bytes after the 6-byte page header.
    payload: Vec<u8>,
    /// The decompressed page, which the FileChecksum covers.
    page: Vec<u8>,
}

fn block_frame(pgno: u32, page: &[u8]) -> RawFrame {
    let c = lz4_flex::block::compress(page);
    let mut payload = (c.len() as u32).to_be_bytes().to_vec();
    payload.extend_from_slice(&c);
    RawFrame {
        pgno,
        flags: PAGE_FLAG_SIZE,
        payload,
        page: page.to_vec(),
    }
}

/// Legacy (flags 0) frame shaped like pierrec/lz4 output of Litestream 0.5.15.
fn legacy_frame(pgno: u32, page: &[u8]) -> RawFrame {
    use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
    let info = FrameInfo::new()
        .block_size(BlockSize::Max64KB)
        .block_mode(BlockMode::Independent)
        .content_checksum(true);
    let mut enc = FrameEncoder::with_frame_info(info, Vec::new());
    enc.write_all(page).unwrap();
    RawFrame {
        pgno,
        flags: 0,
        payload: enc.finish().unwrap(),
        page: page.to_vec(),
    }
}

/// Assembles a file with a correct index and FileChecksum around arbitrary
/// (possibly rule-breaking) frames.
fn build_raw(h: &Header, frames: &[RawFrame], post_apply: u64) -> Vec<u8> {
    let mut out = h.to_bytes().to_vec();
    let mut hasher = FileHasher::new();
    hasher.update(&out);
    let mut index = Vec::new();
    for f in frames {
        let off = out.len();
        let mut head = f.pgno.to_be_bytes().to_vec();
        head.extend_from_slice(&f.flags.to_be_bytes());
        hasher.update(&head);
        if f.flags & PAGE_FLAG_SIZE != 0 {
            hasher.update(&f.payload[..4]);
        }
        hasher.update(&f.page);
        out.extend_from_slice(&head);
        out.extend_from_slice(&f.payload);
        for v in [u64::from(f.pgno), off as u64, (6 + f.payload.len()) as u64] {
            varint::put_uvarint(&mut index, v);
        }
    }
    index.push(0);
    let mut tail = vec![0u8; 6];
    tail.extend_from_slice(&index);
    tail.extend_from_slice(&(index.len() as u64).to_be_bytes());
    tail.extend_from_slice(&post_apply.to_be_bytes());
    hasher.update(&tail);
    out.extend_from_slice(&tail);
    out.extend_from_slice(&hasher.file_checksum().to_be_bytes());
    out
}

/// Every single-byte change must be an error or decode to exactly the same content,
/// and every truncation must be an error; never a panic.
///
/// "Same content" is unavoidable: the FileChecksum covers decompressed pages, not
/// the LZ4 bytes, and some LZ4 edits do not change the output (e.g. the match
/// offset inside a run of zeros: offset 2 and offset 3 copy the same zeros).
/// Returns how many flips decoded to the same content.
fn assert_corruption_detected(file: &[u8]) -> usize {
    let original = decode_all(file).unwrap();
    let mut benign = 0;
    for i in 0..file.len() {
        for x in [0x01u8, 0x80, 0xff] {
            let mut bad = file.to_vec();
            bad[i] ^= x;
            match decode_all(&bad) {
                Err(_) => {}
                Ok(same) => {
                    assert!(
                        same == original,
                        "flip {x:#04x} at byte {i} of {} changed the content unnoticed",
                        file.len()
                    );
                    assert!(i >= HEADER_SIZE, "header flip at {i} unnoticed");
                    assert!(
                        i < file.len() - TRAILER_SIZE,
                        "trailer flip at {i} unnoticed"
                    );
                    benign += 1;
                }
            }
        }
    }
    for len in 0..file.len() {
        let r = decode_all(&file[..len]);
        assert!(r.is_err(), "truncation to {len} bytes went unnoticed");
    }
    let mut long = file.to_vec();
    long.push(0);
    assert!(matches!(
        decode_all(&long),
        Err(LtxError::InvalidTrailer(_))
    ));
    benign
}

/// Applies a file to a database image (docs/ltx-format.md §3.2), the lock page staying zero.
fn apply(db: &mut Vec<Vec<u8>>, h: &Header, pages: &[(u32, Vec<u8>)]) {
    let ps = h.page_size as usize;
    for (pgno, data) in pages {
        let i = *pgno as usize - 1;
        if db.len() <= i {
            db.resize(i + 1, vec![0u8; ps]);
        }
        db[i] = data.clone();
    }
    db.resize(h.commit as usize, vec![0u8; ps]);
}

// ---------------------------------------------------------------------------
// the real Litestream file of docs/ltx-format.md §8

const SPEC_L0_HEX: [&str; 6] = [
    "4c54583100000002000010000000050700000000000000040000000000000004",
    "000001a20c6455e9000000000000000000000000000000200000000000001018",
    "b0cefd0e4d86f0a0000000000000000000000000000000000000000000000000",
    "000000000000000300010000002fcf0d000000010ffb000ffb00000200ffffff",
    "ffffffffffffffffffffffffe0000200c0000000000000000301030009000000",
    "0000000364390000000000000000040000000000000000f7a686948e8e1839",
];

fn spec_l0() -> Vec<u8> {
    let hex: String = SPEC_L0_HEX.concat();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn decode_spec_l0_file() {
    let file = spec_l0();
    assert_eq!(file.len(), 191);
    let (h, pages, t) = decode_all(&file).unwrap();
    assert_eq!(
        h,
        Header {
            flags: FLAG_NO_CHECKSUM,
            page_size: 4096,
            commit: 1287,
            min_txid: 4,
            max_txid: 4,
            timestamp_ms: 1_795_504_231_913,
            pre_apply_checksum: 0,
            wal_offset: 32,
            wal_size: 4120,
            wal_salt1: 0xb0ce_fd0e,
            wal_salt2: 0x4d86_f0a0,
            node_id: 0,
        }
    );
    assert!(!h.is_snapshot());
    assert_eq!(pages.len(), 1);
    let (pgno, page) = &pages[0];
    assert_eq!(*pgno, 3);
    assert_eq!(page.len(), 4096);
    assert_eq!(&page[..7], &[0x0d, 0x00, 0x00, 0x00, 0x01, 0x0f, 0xfb]);
    assert_eq!(&page[page.len() - 5..], &[0x03, 0x01, 0x03, 0x00, 0x09]);
    assert_eq!(
        t,
        Trailer {
            post_apply_checksum: 0,
            file_checksum: 0xf7a6_8694_8e8e_1839,
        }
    );
    // Pitfall 1: the checksum is not over the bytes on disk.
    assert_ne!(CHECKSUM_FLAG | crc64(&file[..183]), t.file_checksum);
}

#[test]
fn reencoding_spec_page_gives_valid_file() {
    let (h, pages, _) = decode_all(&spec_l0()).unwrap();
    let ours = encode(h, &pages);
    let (h2, pages2, _) = decode_all(&ours).unwrap();
    assert_eq!((h2, pages2), (h, pages));
}

#[test]
fn spec_file_corruption_and_truncation_detected() {
    let benign = assert_corruption_detected(&spec_l0());
    eprintln!("spec file: {benign} benign LZ4 flips");
}

// ---------------------------------------------------------------------------
// round trips

fn round_trip(h: Header, pages: Pages) {
    let bytes = encode(h, &pages);
    let (h2, pages2, t) = decode_all(&bytes).unwrap();
    assert_eq!(h2, h);
    assert_eq!(pages2.len(), pages.len());
    assert!(pages2 == pages, "pages differ after round trip");
    assert_eq!(t.post_apply_checksum, 0);

    // Locate the index from the end, as Litestream's FetchPageIndex does.
    let n = bytes.len();
    let index_size = u64::from_be_bytes(bytes[n - 24..n - 16].try_into().unwrap()) as usize;
    let index_start = n - 24 - index_size;
    assert_eq!(&bytes[index_start - 6..index_start], &[0u8; 6]);
    // Encoding is deterministic.
    assert_eq!(encode(h, &pages), bytes);
}

#[test]
fn round_trip_incremental_all_page_sizes() {
    let mut rng = Rng(1);
    for ps in [512u32, 4096, 65536] {
        let commit = 40;
        let mut pages = Vec::new();
        for pgno in [1u32, 2, 5, 17, 18, 39, 40] {
            let data = if pgno % 2 == 0 {
                random_page(&mut rng, ps)
            } else {
                stamped_page(pgno, 1, ps)
            };
            pages.push((pgno, data));
        }
        round_trip(header(7, 9, commit, ps), pages);
        round_trip(header(7, 7, commit, ps), Vec::new());
    }
}

#[test]
fn round_trip_snapshot_all_page_sizes() {
    let mut rng = Rng(2);
    for ps in [512u32, 4096, 65536] {
        let commit = 12;
        let pages = (1..=commit)
            .map(|pgno| {
                let d = if pgno % 3 == 0 {
                    stamped_page(pgno, 2, ps)
                } else {
                    random_page(&mut rng, ps)
                };
                (pgno, d)
            })
            .collect();
        let mut h = header(1, 5, commit, ps);
        h.wal_offset = 0;
        h.wal_size = 0;
        h.wal_salt1 = 0;
        h.wal_salt2 = 0;
        round_trip(h, pages);
    }
}

#[test]
fn incompressible_page_exceeds_page_size_on_disk() {
    let mut rng = Rng(3);
    let page = random_page(&mut rng, 4096);
    let bytes = encode(header(2, 2, 1, 4096), &[(1, page.clone())]);
    let csize = u32::from_be_bytes(bytes[106..110].try_into().unwrap());
    assert!(csize > 4096, "random page compressed to {csize}");
    assert_eq!(decode_all(&bytes).unwrap().1, vec![(1, page)]);
}

#[test]
fn snapshot_spanning_lock_page() {
    let ps = 65536u32;
    let lock = lock_pgno(ps);
    assert_eq!(lock, 16385);
    let commit = lock + 5;
    let page_for = |pgno: u32| stamped_page(pgno, 9, ps);

    let mut e = Encoder::new(Vec::new(), header(1, 1, commit, ps)).unwrap();
    for pgno in (1..=commit).filter(|&p| p != lock) {
        e.write_page(pgno, &page_for(pgno)).unwrap();
        if pgno == lock - 1 {
            // Refused even where the sequence would put it; the encoder stays usable.
            assert!(e.write_page(lock, &page_for(lock)).is_err());
        }
    }
    let (bytes, _) = e.finish().unwrap();

    let mut d = Decoder::new(&bytes[..]).unwrap();
    let mut buf = vec![0u8; ps as usize];
    let mut expected = (1..=commit).filter(|&p| p != lock);
    while let Some(pgno) = d.next_page(&mut buf).unwrap() {
        assert_eq!(Some(pgno), expected.next());
        assert!(buf == page_for(pgno), "page {pgno} differs");
    }
    assert_eq!(expected.next(), None);
    d.finish().unwrap();
}

#[test]
fn snapshot_whose_commit_is_the_lock_page() {
    // The last page is Commit - 1 when Commit is the lock page (docs/ltx-format.md §1.4, rule 4).
    let ps = 65536u32;
    let lock = lock_pgno(ps);
    let h = header(1, 1, lock, ps);
    let mut e = Encoder::new(Vec::new(), h).unwrap();
    let zero = vec![0u8; ps as usize];
    for pgno in 1..lock {
        e.write_page(pgno, &zero).unwrap();
    }
    let (bytes, _) = e.finish().unwrap();
    let mut d = Decoder::new(&bytes[..]).unwrap();
    let mut buf = vec![0u8; ps as usize];
    let mut n = 0;
    while d.next_page(&mut buf).unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, lock - 1);
    d.finish().unwrap();
}

// ---------------------------------------------------------------------------
// legacy frames

#[test]
fn legacy_frames_decode_and_mix_with_blocks() {
    let mut rng = Rng(4);
    let ps = 4096;
    let p1 = stamped_page(1, 1, ps);
    let p2 = random_page(&mut rng, ps);
    let p3 = stamped_page(3, 3, ps);
    let h = header(1, 3, 3, ps);
    let frames = [
        legacy_frame(1, &p1),
        block_frame(2, &p2),
        legacy_frame(3, &p3),
    ];
    // Same layout as the 0.5.15 frame shown in docs/ltx-format.md §8.
    assert_eq!(
        &frames[0].payload[..6],
        &[0x04, 0x22, 0x4d, 0x18, 0x64, 0x40]
    );
    let file = build_raw(&h, &frames, 0);
    let (h2, pages, _) = decode_all(&file).unwrap();
    assert_eq!(h2, h);
    assert_eq!(pages, vec![(1, p1), (2, p2), (3, p3)]);
}

#[test]
fn legacy_stored_block_for_random_page() {
    let mut rng = Rng(5);
    for ps in [512u32, 65536] {
        let page = random_page(&mut rng, ps);
        let f = legacy_frame(1, &page);
        // Uncompressed-block bit set in the block size word.
        assert!(f.payload[10] & 0x80 != 0, "expected a stored block");
        let file = build_raw(&header(2, 2, 1, ps), &[f], 0);
        assert_eq!(decode_all(&file).unwrap().1, vec![(1, page)]);
    }
}

#[test]
fn legacy_file_corruption_and_truncation_detected() {
    let mut rng = Rng(6);
    let ps = 512;
    let frames = [
        legacy_frame(1, &stamped_page(1, 1, ps)),
        legacy_frame(2, &random_page(&mut rng, ps)),
    ];
    assert_corruption_detected(&build_raw(&header(2, 2, 2, ps), &frames, 0));
}

#[test]
fn legacy_frame_with_wrong_length_rejected() {
    let ps = 512;
    let mut f = legacy_frame(1, &vec![1u8; 1024]);
    f.page = vec![1u8; 512];
    let file = build_raw(&header(2, 2, 1, ps), &[f], 0);
    assert!(matches!(
        decode_all(&file),
        Err(LtxError::InvalidPage { pgno: 1, .. })
    ));
}

// ---------------------------------------------------------------------------
// corruption and strictness

#[test]
fn encoded_file_corruption_and_truncation_detected() {
    let mut rng = Rng(7);
    let ps = 512;
    let pages = vec![
        (1, stamped_page(1, 1, ps)),
        (2, random_page(&mut rng, ps)),
        (3, vec![0u8; ps as usize]),
    ];
    assert_corruption_detected(&encode(header(1, 3, 3, ps), &pages));
    assert_corruption_detected(&encode(header(4, 4, 9, ps), &pages));
}

fn expect_invalid(file: &[u8], what: &str) -> LtxError {
    match decode_all(file) {
        Ok(_) => panic!("{what}: accepted"),
        Err(e) => e,
    }
}

#[test]
fn decoder_rejects_rule_breaking_files() {
    let ps = 512;
    let p = |n: u32| stamped_page(n, 0, ps);
    let inc = header(3, 3, 10, ps);

    let e = expect_invalid(
        &build_raw(&inc, &[block_frame(2, &p(2)), block_frame(1, &p(1))], 0),
        "descending",
    );
    assert!(matches!(e, LtxError::InvalidPage { pgno: 1, .. }), "{e}");
    let e = expect_invalid(
        &build_raw(&inc, &[block_frame(2, &p(2)), block_frame(2, &p(2))], 0),
        "duplicate",
    );
    assert!(matches!(e, LtxError::InvalidPage { pgno: 2, .. }), "{e}");
    let e = expect_invalid(
        &build_raw(&inc, &[block_frame(11, &p(11))], 0),
        "beyond commit",
    );
    assert!(matches!(e, LtxError::InvalidPage { pgno: 11, .. }), "{e}");

    let big = header(3, 3, 3_000_000, ps);
    let lock = lock_pgno(ps);
    let e = expect_invalid(
        &build_raw(&big, &[block_frame(lock, &p(lock))], 0),
        "lock page",
    );
    assert!(matches!(e, LtxError::InvalidPage { .. }), "{e}");

    let mut f = block_frame(1, &p(1));
    f.flags = 0x3;
    let e = expect_invalid(&build_raw(&inc, &[f], 0), "unknown flags");
    assert!(matches!(e, LtxError::InvalidPage { pgno: 1, .. }), "{e}");

    // A block that decompresses to less than a page.
    let short = lz4_flex::block::compress(&[5u8; 100]);
    let mut payload = (short.len() as u32).to_be_bytes().to_vec();
    payload.extend_from_slice(&short);
    let f = RawFrame {
        pgno: 1,
        flags: PAGE_FLAG_SIZE,
        payload,
        page: p(1),
    };
    let e = expect_invalid(&build_raw(&inc, &[f], 0), "short block");
    assert!(matches!(e, LtxError::InvalidPage { pgno: 1, .. }), "{e}");

    // A block that decompresses to more than a page.
    let long = lz4_flex::block::compress(&vec![5u8; ps as usize + 1]);
    let mut payload = (long.len() as u32).to_be_bytes().to_vec();
    payload.extend_from_slice(&long);
    let f = RawFrame {
        pgno: 1,
        flags: PAGE_FLAG_SIZE,
        payload,
        page: p(1),
    };
    let e = expect_invalid(&build_raw(&inc, &[f], 0), "long block");
    assert!(matches!(e, LtxError::InvalidPage { pgno: 1, .. }), "{e}");

    // Snapshots must be complete.
    let snap = header(1, 1, 3, ps);
    let e = expect_invalid(
        &build_raw(&snap, &[block_frame(1, &p(1)), block_frame(3, &p(3))], 0),
        "gap",
    );
    assert!(
        matches!(
            e,
            LtxError::IncompleteSnapshot {
                missing_pgno: 2,
                ..
            }
        ),
        "{e}"
    );
    let e = expect_invalid(
        &build_raw(&snap, &[block_frame(1, &p(1)), block_frame(2, &p(2))], 0),
        "short",
    );
    assert!(
        matches!(
            e,
            LtxError::IncompleteSnapshot {
                missing_pgno: 3,
                ..
            }
        ),
        "{e}"
    );

    // NoChecksum files may not carry a post-apply checksum.
    let e = expect_invalid(
        &build_raw(&inc, &[block_frame(1, &p(1))], CHECKSUM_FLAG | 1),
        "post-apply",
    );
    assert!(matches!(e, LtxError::InvalidTrailer(_)), "{e}");
}

#[test]
fn decoder_rejects_inconsistent_index() {
    let ps = 512;
    let pages = vec![(1, stamped_page(1, 0, ps)), (2, stamped_page(2, 0, ps))];
    let good = encode(header(2, 2, 2, ps), &pages);
    let n = good.len();
    let index_size = u64::from_be_bytes(good[n - 24..n - 16].try_into().unwrap()) as usize;
    let index_start = n - 24 - index_size;

    // Rewrite the index (and fix up sizes and checksum) to isolate the index checks.
    let rebuild = |index: &[u8], size_field: u64| {
        let mut f = good[..index_start].to_vec();
        f.extend_from_slice(index);
        f.extend_from_slice(&size_field.to_be_bytes());
        f.extend_from_slice(&0u64.to_be_bytes());
        let (hdr, pages) = (&f[..HEADER_SIZE], decode_pages(&good));
        let mut h = FileHasher::new();
        h.update(hdr);
        let mut pos = HEADER_SIZE;
        for page in &pages {
            let csize = u32::from_be_bytes(f[pos + 6..pos + 10].try_into().unwrap()) as usize;
            h.update(&f[pos..pos + 10]);
            h.update(page);
            pos += 10 + csize;
        }
        h.update(&f[pos..]);
        f.extend_from_slice(&h.file_checksum().to_be_bytes());
        f
    };
    let orig = good[index_start..index_start + index_size].to_vec();
    assert_eq!(rebuild(&orig, index_size as u64), good);

    let e = expect_invalid(&rebuild(&orig, index_size as u64 + 1), "index size");
    assert!(matches!(e, LtxError::InvalidIndex(_)), "{e}");
    let mut wrong = orig.clone();
    wrong[1] += 1; // offset of the first entry
    let e = expect_invalid(&rebuild(&wrong, index_size as u64), "offset");
    assert!(matches!(e, LtxError::InvalidIndex(_)), "{e}");
    let e = expect_invalid(&rebuild(&[0], 1), "missing entries");
    assert!(matches!(e, LtxError::InvalidIndex(_)), "{e}");
}

fn decode_pages(file: &[u8]) -> Vec<Vec<u8>> {
    decode_all(file)
        .unwrap()
        .1
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

#[test]
fn decoder_errors_are_sticky() {
    let ps = 512;
    let file = encode(header(2, 2, 2, ps), &[(1, stamped_page(1, 0, ps))]);
    let mut bad = file.clone();
    bad[HEADER_SIZE + 4] = 0x7f; // page flags
    let mut d = Decoder::new(&bad[..]).unwrap();
    let mut buf = vec![0u8; ps as usize];
    assert!(d.next_page(&mut buf).is_err());
    assert!(matches!(d.next_page(&mut buf), Err(LtxError::Poisoned)));
    assert!(d.finish().is_err());

    let mut d = Decoder::new(&file[..]).unwrap();
    let mut small = vec![0u8; 100];
    assert!(matches!(
        d.next_page(&mut small),
        Err(LtxError::InvalidArgument(_))
    ));
    // A wrong buffer is the caller's mistake, not the file's; decoding goes on.
    assert_eq!(d.next_page(&mut buf).unwrap(), Some(1));
    d.finish().unwrap();
}

#[test]
fn finish_drains_unread_pages() {
    let ps = 512;
    let pages: Pages = (1..=4).map(|n| (n, stamped_page(n, 0, ps))).collect();
    let file = encode(header(1, 1, 4, ps), &pages);
    let mut d = Decoder::new(&file[..]).unwrap();
    let mut buf = vec![0u8; ps as usize];
    assert_eq!(d.next_page(&mut buf).unwrap(), Some(1));
    d.finish().unwrap();

    let mut bad = file.clone();
    let n = bad.len();
    bad[n - 1] ^= 1;
    let d = Decoder::new(&bad[..]).unwrap();
    assert!(matches!(d.finish(), Err(LtxError::ChecksumMismatch { .. })));
}

#[test]
fn truncated_input_reports_truncated() {
    let file = spec_l0();
    assert!(matches!(decode_all(&file[..50]), Err(LtxError::Truncated)));
    assert!(matches!(decode_all(&file[..150]), Err(LtxError::Truncated)));
    assert!(matches!(decode_all(&file[..190]), Err(LtxError::Truncated)));
}

// ---------------------------------------------------------------------------
// checksum-enabled files (not written by Litestream, but part of the format)

#[test]
fn checksum_enabled_snapshot_round_trip() {
    let ps = 512;
    let pages: Pages = (1..=3u8)
        .map(|b| (u32::from(b), vec![b; ps as usize]))
        .collect();
    let mut h = header(1, 1, 3, ps);
    h.flags = 0;
    let mut e = Encoder::new(Vec::new(), h).unwrap();
    for (n, p) in &pages {
        e.write_page(*n, p).unwrap();
    }
    let (file, t) = e.finish().unwrap();
    // Golden vector of docs/ltx-format.md §2.3.
    assert_eq!(t.post_apply_checksum, 0xEFFF_FFFF_ECD9_9000);
    assert_eq!(decode_all(&file).unwrap().2, t);

    let frames: Vec<RawFrame> = pages.iter().map(|(n, p)| block_frame(*n, p)).collect();
    let tampered = build_raw(&h, &frames, t.post_apply_checksum ^ 1);
    assert!(matches!(
        decode_all(&tampered),
        Err(LtxError::PostApplyChecksumMismatch {
            computed: 0xEFFF_FFFF_ECD9_9000,
            ..
        })
    ));
    let refs: Vec<(u32, &[u8])> = pages.iter().map(|(n, p)| (*n, &p[..])).collect();
    assert_eq!(database_checksum(refs), t.post_apply_checksum);
}

#[test]
fn checksum_enabled_incremental_needs_explicit_post_apply() {
    let ps = 512;
    let mut h = header(2, 2, 3, ps);
    h.flags = 0;
    h.pre_apply_checksum = CHECKSUM_FLAG | 42;
    let mut e = Encoder::new(Vec::new(), h).unwrap();
    e.write_page(2, &vec![1u8; 512]).unwrap();
    assert!(e.set_post_apply_checksum(7).is_err());
    e.set_post_apply_checksum(CHECKSUM_FLAG | 7).unwrap();
    let (file, t) = e.finish().unwrap();
    assert_eq!(t.post_apply_checksum, CHECKSUM_FLAG | 7);
    decode_all(&file).unwrap();

    let e = Encoder::new(Vec::new(), h).unwrap();
    assert!(matches!(e.finish(), Err(LtxError::InvalidArgument(_))));

    let mut e = Encoder::new(Vec::new(), header(2, 2, 3, ps)).unwrap();
    assert!(e.set_post_apply_checksum(CHECKSUM_FLAG).is_err());
}

// ---------------------------------------------------------------------------
// compaction

/// Compacts `files`, checks the output header, and checks that applying the
/// output to `base` equals applying every input in order.
fn check_compaction(base: &[Vec<u8>], files: &[Vec<u8>]) -> Header {
    let (out, h, t) = compact(files.iter().map(|f| &f[..]).collect(), Vec::new()).unwrap();
    let (h2, merged, t2) = decode_all(&out).unwrap();
    assert_eq!(h2, h);
    assert_eq!(t2, t);

    let inputs: Vec<(Header, Pages, Trailer)> =
        files.iter().map(|f| decode_all(f).unwrap()).collect();
    let first = &inputs[0].0;
    let last = &inputs[inputs.len() - 1].0;
    assert_eq!(h.flags, FLAG_NO_CHECKSUM);
    assert_eq!(h.page_size, first.page_size);
    assert_eq!(h.commit, last.commit);
    assert_eq!(h.min_txid, first.min_txid);
    assert_eq!(h.max_txid, last.max_txid);
    assert_eq!(h.timestamp_ms, last.timestamp_ms);
    assert_eq!(
        (h.wal_offset, h.wal_size, h.wal_salt1, h.wal_salt2),
        (0, 0, 0, 0)
    );
    assert_eq!(
        (h.node_id, h.pre_apply_checksum, t.post_apply_checksum),
        (0, 0, 0)
    );

    let mut expected = base.to_vec();
    for (ih, pages, _) in &inputs {
        apply(&mut expected, ih, pages);
    }
    let mut got = base.to_vec();
    apply(&mut got, &h, &merged);
    assert!(
        got == expected,
        "compacted image differs from sequential apply"
    );
    h
}

/// A random chain of files: an optional snapshot, then incrementals whose TXID
/// ranges overlap or abut. Commit never shrinks and regrows without rewriting,
/// which a real WAL-derived chain cannot do either.
fn random_chain(rng: &mut Rng, ps: u32, with_snapshot: bool, n: usize) -> Vec<Vec<u8>> {
    let mut files = Vec::new();
    let mut commit = 8 + rng.below(8) as u32;
    let mut max_txid = 1u64;
    if with_snapshot {
        let pages: Pages = (1..=commit).map(|p| (p, random_page(rng, ps))).collect();
        files.push(encode(header(1, 1, commit, ps), &pages));
    }
    for i in 0..n {
        let min = if files.is_empty() {
            2
        } else {
            // Overlap or abut the previous file.
            max_txid + 1 - rng.below(max_txid.min(3))
        };
        let max = max_txid.max(min) + 1 + rng.below(2);
        let last = i + 1 == n;
        let new_commit = if last && rng.below(2) == 0 {
            commit - 1 - rng.below(3) as u32 // shrink at the end: pages get dropped
        } else {
            commit + rng.below(3) as u32
        };
        let mut pages = Pages::new();
        for pgno in 1..=new_commit {
            // Growth pages must be written, as SQLite writes them.
            if pgno > commit || rng.below(3) == 0 {
                pages.push((pgno, stamped_page(pgno, i as u8 + 1, ps)));
            }
        }
        if !last && rng.below(4) == 0 {
            pages.clear();
            // An empty file is fine as long as commit did not grow.
            let h = header(min, max, commit, ps);
            files.push(encode(h, &pages));
        } else {
            files.push(encode(header(min, max, new_commit, ps), &pages));
            commit = new_commit;
        }
        max_txid = max;
    }
    files
}

#[test]
fn compact_matches_sequential_apply() {
    let mut rng = Rng(8);
    for round in 0..30 {
        let ps = if round % 2 == 0 { 512 } else { 4096 };
        let with_snapshot = round % 3 != 0;
        let files = random_chain(&mut rng, ps, with_snapshot, 1 + round % 5);
        let base: Vec<Vec<u8>> = if with_snapshot {
            Vec::new()
        } else {
            (1..=40).map(|p| stamped_page(p, 0xee, ps)).collect()
        };
        let h = check_compaction(&base, &files);
        assert_eq!(h.is_snapshot(), with_snapshot);
    }
}

#[test]
fn compact_overlapping_and_adjacent_inputs() {
    let ps = 512;
    let p = |n: u32, t: u8| stamped_page(n, t, ps);
    let snap = encode(
        header(1, 2, 4, ps),
        &(1..=4).map(|n| (n, p(n, 1))).collect::<Vec<_>>(),
    );
    let overlap = encode(header(2, 5, 5, ps), &[(2, p(2, 2)), (5, p(5, 2))]);
    let adjacent = encode(header(6, 6, 3, ps), &[(1, p(1, 3))]);
    let h = check_compaction(&[], &[snap.clone(), overlap.clone(), adjacent.clone()]);
    assert_eq!((h.min_txid, h.max_txid, h.commit), (1, 6, 3));

    let (out, _, _) = compact(vec![&snap[..], &overlap[..], &adjacent[..]], Vec::new()).unwrap();
    let (_, pages, _) = decode_all(&out).unwrap();
    assert_eq!(pages, vec![(1, p(1, 3)), (2, p(2, 2)), (3, p(3, 1))]);

    // A single input is copied (re-encoded).
    check_compaction(&[], std::slice::from_ref(&snap));
}

#[test]
fn compact_legacy_inputs_into_block_encoding() {
    let ps = 4096;
    let p = |n: u32, t: u8| stamped_page(n, t, ps);
    let a = build_raw(
        &header(1, 1, 2, ps),
        &[legacy_frame(1, &p(1, 1)), legacy_frame(2, &p(2, 1))],
        0,
    );
    let b = encode(header(2, 2, 2, ps), &[(2, p(2, 2))]);
    check_compaction(&[], &[a.clone(), b.clone()]);
    let (out, _, _) = compact(vec![&a[..], &b[..]], Vec::new()).unwrap();
    assert_eq!(u16::from_be_bytes([out[104], out[105]]), PAGE_FLAG_SIZE);
}

#[test]
fn compact_rejects_gaps_and_bad_inputs() {
    let ps = 512;
    let f = |min, max| encode(header(min, max, 2, ps), &[(1, stamped_page(1, 0, ps))]);
    let gap = compact(vec![&f(2, 3)[..], &f(5, 5)[..]], Vec::new());
    assert!(matches!(
        gap,
        Err(LtxError::NotContiguous {
            prev_max_txid: 3,
            next_min_txid: 5,
            next_max_txid: 5
        })
    ));
    // MaxTXID must advance.
    assert!(matches!(
        compact(vec![&f(2, 5)[..], &f(3, 5)[..]], Vec::new()),
        Err(LtxError::NotContiguous { .. })
    ));
    // Out of order.
    assert!(compact(vec![&f(5, 5)[..], &f(2, 2)[..]], Vec::new()).is_err());

    let other = encode(header(3, 3, 2, 1024), &[(1, stamped_page(1, 0, 1024))]);
    assert!(matches!(
        compact(vec![&f(2, 2)[..], &other[..]], Vec::new()),
        Err(LtxError::PageSizeMismatch {
            expected: 512,
            got: 1024
        })
    ));
    assert!(matches!(
        compact(Vec::<&[u8]>::new(), Vec::new()),
        Err(LtxError::InvalidArgument(_))
    ));

    // A corrupt input fails the compaction even though its pages merged fine.
    let mut bad = f(3, 3);
    let n = bad.len();
    bad[n - 1] ^= 1;
    assert!(matches!(
        compact(vec![&f(2, 2)[..], &bad[..]], Vec::new()),
        Err(LtxError::ChecksumMismatch { .. })
    ));
}
