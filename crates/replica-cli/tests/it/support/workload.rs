//! What the replication tests write: transactions of random rows into the tables of
//! [`SCHEMA`], from a seeded RNG so a failing run can be repeated.

use std::path::Path;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, RngCore};
use rusqlite::{Connection, params};

use super::open_wal_db;

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

/// A WAL database with the table the scenarios write.
pub fn new_db(path: &Path) -> Connection {
    let conn = open_wal_db(path);
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB)")
        .expect("schema");
    conn
}

/// `batches` transactions of `rows` inserts of up to 3 kB and a delete, 40 ms apart.
pub fn write_batches(conn: &Connection, batches: usize, rows: usize) {
    for i in 0..batches {
        conn.execute_batch("BEGIN").expect("begin");
        for j in 0..rows {
            conn.execute(
                "INSERT INTO t(v, b) VALUES (?1, randomblob(?2))",
                (format!("batch {i} row {j}"), (100 + (j * 37) % 3000) as i64),
            )
            .expect("insert");
        }
        conn.execute("DELETE FROM t WHERE id % 7 = 0", [])
            .expect("delete");
        conn.execute_batch("COMMIT").expect("commit");
        std::thread::sleep(Duration::from_millis(40));
    }
}
