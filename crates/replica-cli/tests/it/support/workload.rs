//! What the replication tests write: transactions of random rows into the tables of
//! [`SCHEMA`], from a seeded RNG so a failing run can be repeated.

use rand::rngs::StdRng;
use rand::{Rng, RngCore};
use rusqlite::{Connection, params};

/// `t` for rows of every size ([`insert_rows`]), a `WITHOUT ROWID` table `kv` and a
/// table `blobs` for values of several MiB.
pub const SCHEMA: &str = "
    CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT UNIQUE, v TEXT, n INTEGER, b BLOB);
    CREATE INDEX t_n ON t(n);
    CREATE TABLE kv(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
    CREATE TABLE blobs(id INTEGER PRIMARY KEY, data BLOB);
";

/// Runs `f` in a `BEGIN IMMEDIATE` transaction (so concurrent writers wait on the
/// busy timeout instead of failing on a stale snapshot).
pub fn tx<T>(conn: &Connection, f: impl FnOnce(&Connection) -> T) -> T {
    conn.execute_batch("BEGIN IMMEDIATE")
        .expect("BEGIN IMMEDIATE");
    let r = f(conn);
    conn.execute_batch("COMMIT").expect("COMMIT");
    r
}

/// Inserts `n` rows into `t` with text values of `len` bytes and a blob in every
/// fourth row; keys are unique per (`tag`, i).
pub fn insert_rows(conn: &Connection, tag: &str, n: usize, len: usize, rng: &mut StdRng) {
    let mut st = conn
        .prepare_cached("INSERT INTO t(k, v, n, b) VALUES (?1, ?2, ?3, ?4)")
        .expect("prepare insert");
    for i in 0..n {
        let k = format!("{tag}-{i}-{}", rng.random::<u32>());
        let v: String = (0..len)
            .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
            .collect();
        let blob: Option<Vec<u8>> = (i % 4 == 0).then(|| {
            let len = rng.random_range(0..200usize);
            random_blob(rng, len)
        });
        st.execute(params![k, v, rng.random_range(0..1000i64), blob])
            .expect("insert");
    }
}

pub fn random_blob(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    rng.fill_bytes(&mut b);
    b
}
