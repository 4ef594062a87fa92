//! Tests against WAL files written by real SQLite (rusqlite, bundled).

use super::*;
use rusqlite::Connection;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

struct Db {
    // Field order is drop order: the connection must close before the directory goes away.
    conn: Connection,
    path: PathBuf,
    _dir: TempDir,
}

impl Db {
    fn new(page_size: u32) -> Db {
        Db::with_uri_params(page_size, "")
    }

    fn with_uri_params(page_size: u32, params: &str) -> Db {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let conn = if params.is_empty() {
            Connection::open(&path).unwrap()
        } else {
            Connection::open(format!("file:{}?{params}", path.display())).unwrap()
        };
        conn.execute_batch(&format!("PRAGMA page_size={page_size};"))
            .unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.execute_batch(
            "PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);",
        )
        .unwrap();
        Db {
            conn,
            path,
            _dir: dir,
        }
    }

    fn wal_path(&self) -> PathBuf {
        wal_path_of(&self.path)
    }

    fn wal(&self) -> File {
        File::open(self.wal_path()).unwrap()
    }

    fn wal_bytes(&self) -> Vec<u8> {
        std::fs::read(self.wal_path()).unwrap()
    }

    fn header(&self) -> WalHeader {
        read_header(&self.wal()).unwrap().unwrap()
    }

    /// One transaction inserting `rows` random blobs of `len` bytes.
    fn insert(&self, rows: u32, len: u32) {
        insert(&self.conn, rows, len);
    }

    fn page_count(&self) -> u32 {
        self.conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap()
    }

    fn page_size(&self) -> u32 {
        self.conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap()
    }

    fn checkpoint(&self, mode: &str) -> (i64, i64, i64) {
        checkpoint(&self.conn, mode)
    }
}

fn wal_path_of(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

fn insert(conn: &Connection, rows: u32, len: u32) {
    conn.execute(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?1)
         INSERT INTO t(v) SELECT randomblob(?2) FROM c",
        (rows, len),
    )
    .unwrap();
}

fn checkpoint(conn: &Connection, mode: &str) -> (i64, i64, i64) {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
    .unwrap()
}

fn row_stats(conn: &Connection) -> (i64, i64) {
    conn.query_row(
        "SELECT count(*), coalesce(sum(length(v)), 0) FROM t",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

/// Writes `db` and `wal` into a fresh directory and opens them with SQLite, which runs its own
/// recovery over the WAL.
fn open_copy(db: &[u8], wal: &[u8]) -> (TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copy.db");
    std::fs::write(&path, db).unwrap();
    std::fs::write(wal_path_of(&path), wal).unwrap();
    let conn = Connection::open(&path).unwrap();
    (dir, conn)
}

/// Reads the db file through one handle; tests keep it open while connections exist (closing
/// any handle to the db file drops the process's POSIX locks on it).
fn read_all(f: &File) -> Vec<u8> {
    let len = f.metadata().unwrap().len() as usize;
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, 0).unwrap();
    b
}

/// A frame header as found in the file, without any validation.
#[derive(Debug, Clone, Copy)]
struct RawFrame {
    offset: u64,
    pgno: u32,
    commit: u32,
    salts: (u32, u32),
}

fn raw_frames(wal: &[u8], page_size: u32) -> Vec<RawFrame> {
    let fs = FRAME_HEADER_SIZE as usize + page_size as usize;
    let mut out = Vec::new();
    let mut off = WAL_HEADER_SIZE as usize;
    while off + fs <= wal.len() {
        out.push(RawFrame {
            offset: off as u64,
            pgno: be32(wal, off),
            commit: be32(wal, off + 4),
            salts: (be32(wal, off + 8), be32(wal, off + 12)),
        });
        off += fs;
    }
    out
}

/// Checks a scan against a naive reading of the raw frames in [from, end): every frame there
/// carries the salts, the map holds each page's last frame, and the counts add up.
fn assert_scan_matches_raw(wal: &[u8], h: &WalHeader, from: WalPosition, s: &Scan) {
    let frames: Vec<RawFrame> = raw_frames(wal, h.page_size)
        .into_iter()
        .filter(|f| f.offset >= from.offset && f.offset < s.end.offset)
        .collect();
    let mut newest = BTreeMap::new();
    for f in &frames {
        assert_eq!(f.salts, (h.salt1, h.salt2));
        assert_ne!(f.pgno, 0);
        newest.insert(f.pgno, f.offset);
    }
    if let Some(c) = s.db_pages {
        newest.retain(|&p, _| p <= c);
    }
    assert_eq!(s.pages, newest);
    assert_eq!(s.frames, frames.len() as u64);
    assert_eq!(
        s.commits,
        frames.iter().filter(|f| f.commit != 0).count() as u64
    );
    if let Some(last) = frames.last() {
        assert_ne!(last.commit, 0, "a scan must end on a commit frame");
        assert_eq!(Some(last.commit), s.db_pages);
    }
}

fn scan_all(f: &File, h: &WalHeader) -> Scan {
    scan(f, h, WalPosition::start(h), None).unwrap()
}

/// Re-encodes a WAL image in place so that its header and frame checksums are valid again after
/// some bytes were edited (or the word order changed).
fn reseal(wal: &mut [u8], big_endian: bool) {
    let magic = if big_endian { MAGIC_BE } else { MAGIC_LE };
    wal[0..4].copy_from_slice(&magic.to_be_bytes());
    let h = checksum(&wal[..24], big_endian, (0, 0));
    wal[24..28].copy_from_slice(&h.0.to_be_bytes());
    wal[28..32].copy_from_slice(&h.1.to_be_bytes());
    let page_size = be32(wal, 8);
    let fs = FRAME_HEADER_SIZE as usize + page_size as usize;
    let mut running = h;
    let mut off = WAL_HEADER_SIZE as usize;
    while off + fs <= wal.len() {
        let c = checksum(&wal[off..off + 8], big_endian, running);
        let c = checksum(&wal[off + 24..off + fs], big_endian, c);
        wal[off + 16..off + 20].copy_from_slice(&c.0.to_be_bytes());
        wal[off + 20..off + 24].copy_from_slice(&c.1.to_be_bytes());
        running = c;
        off += fs;
    }
}

const PAGE_SIZES: [u32; 3] = [1024, 4096, 65536];

// ---------------------------------------------------------------------------------------------
// Header
// ---------------------------------------------------------------------------------------------

#[test]
fn wal_header_parse_matches_page_size_and_rejects_corruption() {
    for ps in PAGE_SIZES {
        let db = Db::new(ps);
        db.insert(3, 100);
        let h = db.header();
        assert_eq!(h.page_size, db.page_size());
        assert_eq!(h.page_size, ps);
        assert_eq!(h.version, 3_007_000);
        assert_eq!(h.frame_size(), 24 + u64::from(ps));
        assert_eq!(h.big_endian(), cfg!(target_endian = "big"));

        let bytes: [u8; 32] = db.wal_bytes()[..32].try_into().unwrap();
        assert_eq!(WalHeader::parse(&bytes), Some(h));
        for bit in 0..256 {
            let mut b = bytes;
            b[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(WalHeader::parse(&b), None, "bit {bit} flipped");
        }

        // Each field check on its own, with a checksum that is valid for the bad value.
        let resealed = |edit: &dyn Fn(&mut [u8; 32])| {
            let mut b = bytes;
            edit(&mut b);
            let c = checksum(&b[..24], h.big_endian(), (0, 0));
            b[24..28].copy_from_slice(&c.0.to_be_bytes());
            b[28..32].copy_from_slice(&c.1.to_be_bytes());
            WalHeader::parse(&b)
        };
        assert_eq!(resealed(&|_| {}), Some(h));
        assert_eq!(
            resealed(&|b| b[4..8].copy_from_slice(&3_007_001u32.to_be_bytes())),
            None
        );
        for bad in [0u32, 256, 1000, 3000, 131_072] {
            assert_eq!(
                resealed(&|b| b[8..12].copy_from_slice(&bad.to_be_bytes())),
                None
            );
        }
        assert_eq!(
            resealed(&|b| b[0..4].copy_from_slice(&0x377f_0681u32.to_be_bytes())),
            None
        );
    }
}

#[test]
fn wal_read_header_of_short_or_empty_file_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x-wal");
    for len in [0usize, 1, 31] {
        std::fs::write(&p, vec![0x37u8; len]).unwrap();
        assert_eq!(read_header(&File::open(&p).unwrap()).unwrap(), None);
    }
    std::fs::write(&p, [0u8; 32]).unwrap();
    assert_eq!(read_header(&File::open(&p).unwrap()).unwrap(), None);
}

#[test]
fn wal_checksum_known_vectors() {
    // Pairs (a, b): s0 += a + s1; s1 += b + s0.
    let data = [1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0];
    assert_eq!(checksum(&data[..8], false, (0, 0)), (1, 3));
    assert_eq!(checksum(&data[..8], false, (10, 20)), (31, 53));
    // Second pair: s0 = 1 + 3 + 3 = 7, s1 = 3 + 4 + 7 = 14.
    assert_eq!(checksum(&data, false, (0, 0)), (7, 14));
    assert_eq!(checksum(&data[8..], false, (1, 3)), (7, 14));
    assert_eq!(
        checksum(&data[..8], true, (0, 0)),
        (0x0100_0000, 0x0300_0000)
    );
    // Wrapping, not overflow.
    let max = [0xff; 8];
    assert_eq!(
        checksum(&max, false, (u32::MAX, u32::MAX)),
        (u32::MAX.wrapping_mul(3), u32::MAX.wrapping_mul(5))
    );
}

// ---------------------------------------------------------------------------------------------
// Scanning
// ---------------------------------------------------------------------------------------------

#[test]
fn wal_scan_counts_commits_and_matches_page_count() {
    for ps in PAGE_SIZES {
        let db = Db::new(ps);
        // CREATE TABLE was commit 1.
        let mut n = 1;
        for i in 0..6 {
            db.insert(1 + i * 7, 300 + i * 250);
            n += 1;
        }
        // Updates rewrite existing pages, so the map must keep only the newest frame.
        db.conn
            .execute("UPDATE t SET v = randomblob(50) WHERE id % 3 = 0", [])
            .unwrap();
        n += 1;

        let f = db.wal();
        let h = db.header();
        let s = scan_all(&f, &h);
        assert_eq!(s.commits, n, "page size {ps}");
        assert_eq!(s.db_pages, Some(db.page_count()));
        let wal = db.wal_bytes();
        assert_eq!(s.end.offset, wal.len() as u64, "every frame is committed");
        assert_eq!(s.frames, raw_frames(&wal, ps).len() as u64);
        assert_eq!((s.end.salt1, s.end.salt2), (h.salt1, h.salt2));
        assert_scan_matches_raw(&wal, &h, WalPosition::start(&h), &s);
        // Each page's newest image appears in the map: the frame holds that page number.
        for (&pgno, &off) in &s.pages {
            assert_eq!(be32(&wal, off as usize), pgno);
        }
    }
}

#[test]
fn wal_scan_of_header_only_wal_is_empty() {
    let db = Db::new(4096);
    db.checkpoint("TRUNCATE");
    assert_eq!(read_header(&db.wal()).unwrap(), None);
    db.insert(1, 10);
    let h = db.header();
    // Cut the file right after the header: a valid generation with no frames.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w");
    std::fs::write(&p, &db.wal_bytes()[..32]).unwrap();
    let f = File::open(&p).unwrap();
    let s = scan_all(&f, &h);
    assert_eq!(s.end, WalPosition::start(&h));
    assert_eq!((s.db_pages, s.frames, s.commits), (None, 0, 0));
    assert!(s.pages.is_empty());
}

#[test]
fn wal_incremental_scan_equals_full_scan() {
    for ps in PAGE_SIZES {
        let db = Db::new(ps);
        let f = db.wal();
        let h = db.header();
        let mut pos = WalPosition::start(&h);
        let mut pages = BTreeMap::new();
        let (mut frames, mut commits, mut commit) = (0, 0, None);
        for round in 0..5u32 {
            for k in 0..round + 1 {
                db.insert(2 + k * 5, 200 + round * 300);
            }
            if round == 3 {
                db.conn
                    .execute("DELETE FROM t WHERE id % 2 = 0", [])
                    .unwrap();
            }
            let s = scan(&f, &h, pos, None).unwrap();
            assert!(s.commits > 0);
            assert_eq!(
                stored_checksum_before(&f, &h, s.end.offset).unwrap(),
                Some(s.end.checksum)
            );
            pos = s.end;
            frames += s.frames;
            commits += s.commits;
            commit = s.db_pages.or(commit);
            pages.extend(s.pages);
            if let Some(c) = commit {
                pages.retain(|&p, _| p <= c);
            }
            // Nothing new: an empty scan at the same position.
            let again = scan(&f, &h, pos, None).unwrap();
            assert_eq!(again.end, pos);
            assert_eq!((again.db_pages, again.frames, again.commits), (None, 0, 0));
        }
        let full = scan_all(&f, &h);
        assert_eq!(full.end, pos);
        assert_eq!(full.pages, pages);
        assert_eq!(
            (full.frames, full.commits, full.db_pages),
            (frames, commits, commit)
        );
        assert_eq!(full.db_pages, Some(db.page_count()));
    }
}

#[test]
fn wal_scan_max_frames_stops_at_commit_boundaries() {
    let db = Db::new(1024);
    for i in 0..12 {
        db.insert(1 + i, 700);
    }
    let f = db.wal();
    let h = db.header();
    let wal = db.wal_bytes();
    let full = scan_all(&f, &h);
    assert!(full.frames > 20);

    assert_eq!(
        scan(&f, &h, WalPosition::start(&h), Some(0)).unwrap().end,
        WalPosition::start(&h)
    );

    for bound in [1u64, 3, 8] {
        let mut pos = WalPosition::start(&h);
        let mut pages = BTreeMap::new();
        let (mut frames, mut commits) = (0, 0);
        loop {
            let s = scan(&f, &h, pos, Some(bound)).unwrap();
            if s.commits == 0 {
                break;
            }
            assert_scan_matches_raw(&wal, &h, pos, &s);
            // Stopped at the first commit that reached the bound: without the last transaction
            // the bound was not reached yet.
            let last_commit_start = raw_frames(&wal, h.page_size)
                .iter()
                .filter(|fr| fr.offset >= pos.offset && fr.offset < s.end.offset && fr.commit != 0)
                .rev()
                .nth(1)
                .map(|fr| fr.offset + h.frame_size());
            if let Some(prev_end) = last_commit_start {
                assert!((prev_end - pos.offset) / h.frame_size() < bound);
            }
            pos = s.end;
            frames += s.frames;
            commits += s.commits;
            pages.extend(s.pages);
        }
        assert_eq!(pos, full.end);
        assert_eq!((frames, commits), (full.frames, full.commits));
        assert_eq!(full.pages, pages);
    }
}

#[test]
fn wal_scan_is_independent_of_read_size() {
    let db = Db::new(1024);
    for i in 0..8 {
        db.insert(1 + i * 3, 600);
    }
    let writer = Connection::open(&db.path).unwrap();
    writer
        .execute_batch("PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=10; BEGIN;")
        .unwrap();
    insert(&writer, 200, 900);
    let f = db.wal();
    let h = db.header();
    let wal = db.wal_bytes();
    let reference = scan_all(&f, &h);
    assert!(reference.end.offset < wal.len() as u64);
    let mid = scan(&f, &h, WalPosition::start(&h), Some(10)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let torn_path = dir.path().join("torn-wal");
    std::fs::write(&torn_path, &wal[..reference.end.offset as usize - 100]).unwrap();
    let torn = File::open(&torn_path).unwrap();
    let torn_reference = scan_all(&torn, &h);
    assert!(torn_reference.end.offset < reference.end.offset);

    for frames_per_read in [1u64, 2, 3, 5, 7, 64] {
        let chunk = frames_per_read * h.frame_size();
        for (file, expected) in [(&f, &reference), (&torn, &torn_reference)] {
            let s = scan_chunked(file, &h, WalPosition::start(&h), None, chunk).unwrap();
            assert_eq!(s.end, expected.end, "{frames_per_read} frames per read");
            assert_eq!(s.pages, expected.pages);
            assert_eq!(
                (s.frames, s.commits, s.db_pages),
                (expected.frames, expected.commits, expected.db_pages)
            );
        }
        let s = scan_chunked(&f, &h, WalPosition::start(&h), Some(10), chunk).unwrap();
        assert_eq!((s.end, &s.pages), (mid.end, &mid.pages));
        let s = scan_chunked(&f, &h, mid.end, None, chunk).unwrap();
        assert_eq!(s.end, reference.end);
        assert_eq!(s.frames + mid.frames, reference.frames);
    }
    writer.execute_batch("ROLLBACK").unwrap();
}

#[test]
fn wal_scan_rejects_misaligned_offset_and_foreign_salts() {
    let db = Db::new(4096);
    db.insert(5, 100);
    let f = db.wal();
    let h = db.header();
    let mut from = WalPosition::start(&h);
    from.offset += 8;
    let e = scan(&f, &h, from, None).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);

    let mut foreign = WalPosition::start(&h);
    foreign.salt2 ^= 1;
    let s = scan(&f, &h, foreign, None).unwrap();
    assert_eq!(s.end, foreign);
    assert_eq!((s.frames, s.commits), (0, 0));
}

#[test]
fn wal_torn_tail_stops_at_last_complete_commit() {
    for ps in PAGE_SIZES {
        let db = Db::new(ps);
        db.insert(3, 100);
        db.insert(3, 100);
        let f = db.wal();
        let h = db.header();
        let before = scan_all(&f, &h);
        let rows_before = row_stats(&db.conn);
        // A transaction spanning several frames, so that cutting it leaves whole but uncommitted
        // frames behind.
        db.insert(4, ps * 2);
        let wal = db.wal_bytes();
        let frames = raw_frames(&wal, ps);
        let last_txn: Vec<_> = frames
            .iter()
            .filter(|fr| fr.offset >= before.end.offset)
            .collect();
        assert!(
            last_txn.len() >= 3,
            "the last transaction spans several frames"
        );

        let mut db_file_bytes = Vec::new();
        let db_file = File::open(&db.path).unwrap();
        db_file_bytes.extend(read_all(&db_file));

        let last = last_txn.last().unwrap().offset as usize;
        for cut in [
            last + 10,
            last + 24 + ps as usize / 2,
            last + h.frame_size() as usize - 1,
        ] {
            let torn = &wal[..cut];
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("torn-wal");
            std::fs::write(&p, torn).unwrap();
            let s = scan_all(&File::open(&p).unwrap(), &h);
            assert_eq!(s.end, before.end, "cut at {cut}");
            assert_eq!(s.pages, before.pages);
            assert_eq!(
                (s.frames, s.commits, s.db_pages),
                (before.frames, before.commits, before.db_pages)
            );

            // SQLite's own recovery draws the line at the same place.
            let (_d, copy) = open_copy(&db_file_bytes, torn);
            assert_eq!(row_stats(&copy), rows_before);
        }
        drop(db_file);
    }
}

#[test]
fn wal_uncommitted_spilled_transaction_is_not_returned() {
    let db = Db::new(4096);
    db.insert(10, 500);
    let f = db.wal();
    let h = db.header();
    let committed = scan_all(&f, &h);

    let writer = Connection::open(&db.path).unwrap();
    writer
        .execute_batch("PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=10; BEGIN;")
        .unwrap();
    insert(&writer, 400, 1000);
    let wal = db.wal_bytes();
    let spilled: Vec<_> = raw_frames(&wal, h.page_size)
        .into_iter()
        .filter(|fr| fr.offset >= committed.end.offset && fr.salts == (h.salt1, h.salt2))
        .collect();
    assert!(
        spilled.len() > 20,
        "cache_size=10 must spill frames into the WAL"
    );
    assert!(spilled.iter().all(|fr| fr.commit == 0));

    let s = scan_all(&f, &h);
    assert_eq!(s.end, committed.end);
    assert_eq!(s.pages, committed.pages);
    assert_eq!((s.frames, s.commits), (committed.frames, committed.commits));
    let s = scan(&f, &h, committed.end, None).unwrap();
    assert_eq!((s.end, s.frames, s.commits), (committed.end, 0, 0));

    writer.execute_batch("COMMIT").unwrap();
    let s = scan(&f, &h, committed.end, None).unwrap();
    assert_eq!(s.commits, 1);
    assert!(s.frames >= spilled.len() as u64);
    assert_eq!(s.db_pages, Some(db.page_count()));
    assert_scan_matches_raw(&db.wal_bytes(), &h, committed.end, &s);
}

#[test]
fn wal_rolled_back_spill_is_skipped_and_overwritten() {
    let db = Db::new(4096);
    db.insert(10, 500);
    let f = db.wal();
    let h = db.header();
    let committed = scan_all(&f, &h);

    let writer = Connection::open(&db.path).unwrap();
    writer
        .execute_batch("PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=10; BEGIN;")
        .unwrap();
    insert(&writer, 400, 1000);
    writer.execute_batch("ROLLBACK").unwrap();
    let len_after_rollback = db.wal_bytes().len();
    assert!(len_after_rollback as u64 > committed.end.offset + 20 * h.frame_size());
    assert_eq!(scan_all(&f, &h).end, committed.end);

    // The next commit overwrites the leftovers from the old end; the chain breaks right after it.
    db.insert(1, 10);
    let s = scan(&f, &h, committed.end, None).unwrap();
    assert_eq!(s.commits, 1);
    assert!(s.end.offset < len_after_rollback as u64);
    assert_eq!(s.db_pages, Some(db.page_count()));
}

#[test]
fn wal_flipped_byte_breaks_the_chain() {
    for ps in [1024u32, 65536] {
        let db = Db::new(ps);
        for i in 0..6 {
            db.insert(2 + i, ps / 2);
        }
        let h = db.header();
        let wal = db.wal_bytes();
        let frames = raw_frames(&wal, ps);
        let commits: Vec<_> = frames.iter().filter(|fr| fr.commit != 0).collect();
        // Corrupt a page in the fourth transaction (not its first frame, to show that the
        // transaction is dropped whole).
        let txn_start = commits[2].offset + h.frame_size();
        let txn_end = commits[3].offset + h.frame_size();
        assert!(txn_end - txn_start >= 2 * h.frame_size());
        let victim = txn_start + h.frame_size();
        let mut bad = wal.clone();
        bad[(victim + FRAME_HEADER_SIZE) as usize + 100] ^= 0x40;

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad-wal");
        std::fs::write(&p, &bad).unwrap();
        let s = scan_all(&File::open(&p).unwrap(), &h);
        assert_eq!(s.end.offset, txn_start);
        assert_eq!(s.commits, 3);
        assert_eq!(
            s.end.checksum,
            (
                be32(&wal, txn_start as usize - ps as usize - 8),
                be32(&wal, txn_start as usize - ps as usize - 4)
            )
        );
        assert!(s.pages.values().all(|&o| o < txn_start));

        // A flipped page number or commit field is covered by the checksum too.
        for at in [0usize, 5] {
            let mut bad = wal.clone();
            bad[victim as usize + at] ^= 0x01;
            std::fs::write(&p, &bad).unwrap();
            assert_eq!(scan_all(&File::open(&p).unwrap(), &h).end.offset, txn_start);
        }
    }
}

#[test]
fn wal_salts_change_after_truncate_checkpoint() {
    let db = Db::new(4096);
    db.insert(20, 300);
    let f = db.wal();
    let old = db.header();
    let pos = scan_all(&f, &old).end;
    assert_eq!(
        stored_checksum_before(&f, &old, pos.offset).unwrap(),
        Some(pos.checksum)
    );

    let (busy, _, _) = db.checkpoint("TRUNCATE");
    assert_eq!(busy, 0);
    assert_eq!(f.metadata().unwrap().len(), 0);
    assert_eq!(read_header(&f).unwrap(), None);
    let s = scan(&f, &old, pos, None).unwrap();
    assert_eq!((s.end, s.frames), (pos, 0));
    assert_eq!(stored_checksum_before(&f, &old, pos.offset).unwrap(), None);

    db.insert(1, 10);
    let new = read_header(&f).unwrap().unwrap();
    assert_ne!((new.salt1, new.salt2), (old.salt1, old.salt2));
    for h in [&old, &new] {
        let s = scan(&f, h, pos, None).unwrap();
        assert_eq!((s.end, s.frames, s.commits), (pos, 0, 0));
        assert_eq!(stored_checksum_before(&f, h, pos.offset).unwrap(), None);
    }
    // The old generation's start no longer validates either: frame 1 has the new salts.
    let s = scan(&f, &old, WalPosition::start(&old), None).unwrap();
    assert_eq!(s.frames, 0);
    assert_eq!(
        stored_checksum_before(&f, &old, WAL_HEADER_SIZE).unwrap(),
        None
    );

    let s = scan_all(&f, &new);
    assert_eq!(s.commits, 1);
    assert_eq!(s.db_pages, Some(db.page_count()));
}

#[test]
fn wal_salts_change_after_passive_checkpoint_and_commit() {
    for ps in [1024u32, 65536] {
        let db = Db::new(ps);
        for _ in 0..5 {
            db.insert(10, 300);
        }
        let f = db.wal();
        let old = db.header();
        let first = scan(&f, &old, WalPosition::start(&old), Some(1)).unwrap();
        let pos = scan_all(&f, &old).end;
        let len_before = f.metadata().unwrap().len();

        let (busy, log, ckpt) = db.checkpoint("PASSIVE");
        assert_eq!(
            (busy, log),
            (0, ckpt),
            "everything backfilled: a rewind is armed"
        );
        assert_eq!(
            read_header(&f).unwrap(),
            Some(old),
            "PASSIVE itself does not touch the WAL"
        );
        assert_eq!(scan(&f, &old, pos, None).unwrap().frames, 0);

        db.insert(1, 10);
        let new = read_header(&f).unwrap().unwrap();
        assert_ne!((new.salt1, new.salt2), (old.salt1, old.salt2));
        assert!(
            f.metadata().unwrap().len() <= len_before,
            "the file is reused in place"
        );
        let s = scan(&f, &old, pos, None).unwrap();
        assert_eq!((s.end, s.frames), (pos, 0));
        let s = scan(&f, &new, pos, None).unwrap();
        assert_eq!((s.end, s.frames), (pos, 0));
        assert_eq!(
            scan(&f, &old, WalPosition::start(&old), None)
                .unwrap()
                .frames,
            0
        );
        // The old generation's first commit frame survived the rewind untouched (the new
        // generation is shorter), yet the header on disk no longer proves it.
        let survivor = raw_frames(&db.wal_bytes(), ps)
            .into_iter()
            .find(|fr| fr.offset + old.frame_size() == first.end.offset)
            .unwrap();
        assert_eq!(survivor.salts, (old.salt1, old.salt2));
        assert_eq!(
            stored_checksum_before(&f, &old, first.end.offset).unwrap(),
            None
        );

        let s = scan_all(&f, &new);
        assert_eq!(s.commits, 1);
        assert_eq!(s.db_pages, Some(db.page_count()));
        // Stale frames of the old generation follow, and stop the scan by their salts.
        let stale = raw_frames(&db.wal_bytes(), ps)
            .into_iter()
            .find(|fr| fr.offset == s.end.offset)
            .unwrap();
        assert_eq!(stale.salts, (old.salt1, old.salt2));
    }
}

#[test]
fn wal_padding_frames_are_accepted() {
    // Without powersafe overwrite and with synchronous=FULL, SQLite pads each commit to a
    // sector boundary by repeating the commit frame.
    let db = Db::with_uri_params(1024, "psow=0");
    db.conn.execute_batch("PRAGMA synchronous=FULL").unwrap();
    for i in 0..5 {
        db.insert(1 + i, 200);
    }
    let f = db.wal();
    let h = db.header();
    let wal = db.wal_bytes();
    let frames = raw_frames(&wal, 1024);
    let repeats = frames
        .windows(2)
        .filter(|w| {
            w[0].commit != 0
                && w[0].pgno == w[1].pgno
                && w[0].commit == w[1].commit
                && wal[(w[0].offset + 24) as usize..(w[0].offset + h.frame_size()) as usize]
                    == wal[(w[1].offset + 24) as usize..(w[1].offset + h.frame_size()) as usize]
        })
        .count();
    assert!(repeats > 0, "psow=0 should produce padding frames");
    let s = scan_all(&f, &h);
    assert_eq!(s.end.offset, wal.len() as u64);
    assert_eq!(s.db_pages, Some(db.page_count()));
    assert_scan_matches_raw(&wal, &h, WalPosition::start(&h), &s);
}

#[test]
fn wal_big_endian_checksums_are_honoured() {
    let db = Db::new(1024);
    for i in 0..4 {
        db.insert(3 + i, 400);
    }
    let wal = db.wal_bytes();
    let le = scan_all(&db.wal(), &db.header());

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("be-wal");
    let mut be = wal.clone();
    reseal(&mut be, true);
    std::fs::write(&p, &be).unwrap();
    let f = File::open(&p).unwrap();
    let h = read_header(&f).unwrap().unwrap();
    assert!(h.big_endian());
    let s = scan_all(&f, &h);
    assert_eq!(s.pages, le.pages);
    assert_eq!(
        (s.frames, s.commits, s.db_pages),
        (le.frames, le.commits, le.db_pages)
    );
    assert_ne!(s.end.checksum, le.end.checksum);

    // Reading little-endian words from a big-endian WAL must fail at the header.
    let mut wrong = be.clone();
    wrong[0..4].copy_from_slice(&MAGIC_LE.to_be_bytes());
    assert_eq!(WalHeader::parse(wrong[..32].try_into().unwrap()), None);

    // Resealing little-endian reproduces SQLite's own bytes exactly.
    let mut again = be;
    reseal(&mut again, false);
    assert_eq!(again, wal);
}

// ---------------------------------------------------------------------------------------------
// Page reads and position proofs
// ---------------------------------------------------------------------------------------------

#[test]
fn wal_read_frame_page_returns_images_and_detects_rewind() {
    for ps in PAGE_SIZES {
        let db = Db::new(ps);
        for _ in 0..3 {
            db.insert(8, ps / 3);
        }
        let f = db.wal();
        let h = db.header();
        let wal = db.wal_bytes();
        let s = scan_all(&f, &h);
        let mut buf = vec![0u8; ps as usize];
        for &off in s.pages.values() {
            assert!(read_frame_page(&f, &h, off, &mut buf).unwrap());
            let start = (off + FRAME_HEADER_SIZE) as usize;
            assert_eq!(buf, wal[start..start + ps as usize]);
        }

        let mut small = vec![0u8; ps as usize - 1];
        let e = read_frame_page(&f, &h, WAL_HEADER_SIZE, &mut small).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = read_frame_page(&f, &h, WAL_HEADER_SIZE + 4, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(
            !read_frame_page(&f, &h, s.end.offset, &mut buf).unwrap(),
            "beyond the end"
        );

        let last = *s.pages.values().max().unwrap();
        db.checkpoint("TRUNCATE");
        assert!(!read_frame_page(&f, &h, WAL_HEADER_SIZE, &mut buf).unwrap());
        db.insert(1, 10);
        assert!(!read_frame_page(&f, &h, WAL_HEADER_SIZE, &mut buf).unwrap());
        assert!(!read_frame_page(&f, &h, last, &mut buf).unwrap());
    }
}

#[test]
fn wal_stored_checksum_before_matches_scan_end() {
    let db = Db::new(4096);
    let f = db.wal();
    let h = db.header();
    // At the start of a generation, the proof is the header checksum.
    assert_eq!(
        stored_checksum_before(&f, &h, WAL_HEADER_SIZE).unwrap(),
        Some(h.checksum)
    );
    let mut pos = WalPosition::start(&h);
    for i in 0..4 {
        db.insert(5 + i * 20, 500);
        let s = scan(&f, &h, pos, None).unwrap();
        assert_eq!(
            stored_checksum_before(&f, &h, s.end.offset).unwrap(),
            Some(s.end.checksum)
        );
        pos = s.end;
    }
    assert_eq!(
        stored_checksum_before(&f, &h, pos.offset + 7).unwrap(),
        None
    );
    assert_eq!(
        stored_checksum_before(&f, &h, pos.offset + h.frame_size()).unwrap(),
        None
    );
    assert_eq!(stored_checksum_before(&f, &h, 0).unwrap(), None);
    let mut other = h;
    other.salt1 ^= 1;
    assert_eq!(
        stored_checksum_before(&f, &other, pos.offset).unwrap(),
        None
    );
    assert_eq!(
        stored_checksum_before(&f, &other, WAL_HEADER_SIZE).unwrap(),
        None
    );
}

// ---------------------------------------------------------------------------------------------
// End to end: WAL + db file reproduce what SQLite reads
// ---------------------------------------------------------------------------------------------

#[test]
fn wal_reconstructed_image_matches_sqlite() {
    let ps = 4096u32;
    let db = Db::new(ps);
    db.insert(300, 700);
    db.checkpoint("TRUNCATE");
    // The db file now holds a real base; the WAL then overwrites, grows and shrinks it.
    db.insert(200, 900);
    db.conn
        .execute("UPDATE t SET v = randomblob(123) WHERE id % 5 = 0", [])
        .unwrap();
    db.conn.execute("DELETE FROM t WHERE id > 350", []).unwrap();
    db.conn.execute_batch("VACUUM").unwrap();
    db.insert(40, 2000);
    let db_file = File::open(&db.path).unwrap();

    let f = db.wal();
    let h = db.header();
    let s = scan_all(&f, &h);
    let size = s.db_pages.unwrap();
    assert_eq!(size, db.page_count());
    let db_bytes = read_all(&db_file);
    assert!(
        s.pages
            .keys()
            .any(|&p| (p as usize) * (ps as usize) > db_bytes.len())
            || s.pages.len() < size as usize,
        "the scenario should mix WAL and db-file pages"
    );

    let mut image = vec![0u8; size as usize * ps as usize];
    for (i, page) in image.chunks_exact_mut(ps as usize).enumerate() {
        let pgno = i as u32 + 1;
        match s.pages.get(&pgno) {
            Some(&off) => assert!(read_frame_page(&f, &h, off, page).unwrap()),
            None => db_file
                .read_exact_at(page, i as u64 * u64::from(ps))
                .unwrap(),
        }
    }

    // SQLite's view: the same files, checkpointed by SQLite itself.
    let (dir, copy) = open_copy(&db_bytes, &db.wal_bytes());
    assert_eq!(row_stats(&copy), row_stats(&db.conn));
    let (busy, _, _) = checkpoint(&copy, "TRUNCATE");
    assert_eq!(busy, 0);
    drop(copy);
    let checkpointed = std::fs::read(dir.path().join("copy.db")).unwrap();
    assert_eq!(checkpointed.len(), image.len());
    assert!(
        checkpointed == image,
        "reconstructed image differs from SQLite's"
    );

    // And the image on its own is a sound database with the same content.
    let (_d2, alone) = open_copy(&image, &[]);
    let ok: String = alone
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    assert_eq!(row_stats(&alone), row_stats(&db.conn));
    drop(db_file);
}
