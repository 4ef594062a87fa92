//! A database's content, digested table by table, to tell whether two databases hold
//! the same thing (`replica verify --against`): the schema, and every row of every
//! table in key order. Rows are compared by value with their SQLite type, so the
//! comparison does not depend on page layout, free pages or the WAL.
//!
//! Read it inside one read transaction (a [`ConsistentRead`](crate::engine::ConsistentRead)
//! already is one) to digest one state of a database that is being written.

use crc_fast::{CrcAlgorithm, Digest};
use rusqlite::Connection;
use rusqlite::types::ValueRef;

/// One table's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDigest {
    pub name: String,
    pub rows: u64,
    /// CRC-64 of every row's values with their types, in key order.
    pub hash: u64,
}

/// A database's schema and tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentDigest {
    /// CRC-64 of `sqlite_schema` (type, name, table, SQL), in name order.
    pub schema: u64,
    pub tables: Vec<TableDigest>,
}

impl ContentDigest {
    /// Reads every table of `conn`'s main database. Virtual tables are left out (their
    /// content lives in shadow tables, which are read); so is nothing else.
    pub fn read(conn: &Connection) -> rusqlite::Result<Self> {
        let mut schema = Digest::new(CrcAlgorithm::Crc64Nvme);
        let mut names = Vec::new();
        {
            let mut stmt = conn.prepare(
                "SELECT type, name, tbl_name, coalesce(sql, '') FROM main.sqlite_schema ORDER BY name",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                for i in 0..4 {
                    hash_value(&mut schema, r.get_ref(i)?);
                }
                let kind: String = r.get(0)?;
                let sql: String = r.get(3)?;
                if kind == "table"
                    && !sql
                        .trim_start()
                        .to_ascii_uppercase()
                        .starts_with("CREATE VIRTUAL")
                {
                    names.push(r.get::<_, String>(1)?);
                }
            }
        }
        let mut tables = Vec::with_capacity(names.len());
        for name in names {
            // A full scan reads a table's b-tree in key order (rowid, or the primary
            // key of a WITHOUT ROWID table), whatever its pages look like.
            let quoted = name.replace('"', "\"\"");
            let mut stmt = conn.prepare(&format!("SELECT * FROM main.\"{quoted}\""))?;
            let columns = stmt.column_count();
            let mut rows = stmt.query([])?;
            let (mut d, mut n) = (Digest::new(CrcAlgorithm::Crc64Nvme), 0u64);
            while let Some(r) = rows.next()? {
                for i in 0..columns {
                    hash_value(&mut d, r.get_ref(i)?);
                }
                n += 1;
            }
            tables.push(TableDigest {
                name,
                rows: n,
                hash: d.finalize(),
            });
        }
        Ok(Self {
            schema: schema.finalize(),
            tables,
        })
    }

    /// What differs between `self` and `other`, one line each, naming `self` and
    /// `other` as `a` and `b`; empty when they hold the same content.
    pub fn differences(&self, other: &Self, a: &str, b: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.schema != other.schema {
            out.push(format!("the schema differs between {a} and {b}"));
        }
        for t in &self.tables {
            match other.tables.iter().find(|o| o.name == t.name) {
                None => out.push(format!("table {} is in {a} but not in {b}", t.name)),
                Some(o) if o.rows != t.rows => out.push(format!(
                    "table {}: {} rows in {a}, {} in {b}",
                    t.name, t.rows, o.rows
                )),
                Some(o) if o.hash != t.hash => out.push(format!(
                    "table {}: same row count ({}), different content",
                    t.name, t.rows
                )),
                Some(_) => {}
            }
        }
        for o in &other.tables {
            if !self.tables.iter().any(|t| t.name == o.name) {
                out.push(format!("table {} is in {b} but not in {a}", o.name));
            }
        }
        out
    }
}

/// Opens `path` read-only and begins a read transaction at its current state, for
/// [`ContentDigest::read`] (used where no replicator fixes the point: a database
/// nobody writes, or a restored file).
pub fn open_read(
    path: &std::path::Path,
    busy: std::time::Duration,
) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy)?;
    conn.execute_batch("BEGIN")?;
    conn.query_row(
        "SELECT count(*) FROM (SELECT 1 FROM sqlite_schema LIMIT 1)",
        [],
        |_| Ok(()),
    )?;
    Ok(conn)
}

/// Feeds one value, tagged with its type and length so that no two rows hash alike
/// by concatenation.
fn hash_value(d: &mut Digest, v: ValueRef<'_>) {
    match v {
        ValueRef::Null => d.update(&[0]),
        ValueRef::Integer(i) => {
            d.update(&[1]);
            d.update(&i.to_le_bytes());
        }
        ValueRef::Real(f) => {
            d.update(&[2]);
            d.update(&f.to_bits().to_le_bytes());
        }
        ValueRef::Text(t) => {
            d.update(&[3]);
            d.update(&(t.len() as u64).to_le_bytes());
            d.update(t);
        }
        ValueRef::Blob(b) => {
            d.update(&[4]);
            d.update(&(b.len() as u64).to_le_bytes());
            d.update(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(sql: &str) -> Connection {
        let c = Connection::open_in_memory().expect("in-memory database");
        c.execute_batch(sql).expect("setup");
        c
    }

    #[test]
    fn same_content_in_another_layout_is_equal() {
        let a =
            db("CREATE TABLE t(x, y); INSERT INTO t VALUES (1,'a'),(2,x'00'),(3,NULL),(4,1.5);");
        // Rows inserted in another order, and a row added then deleted: other pages,
        // same content.
        let b = db("CREATE TABLE t(x, y); INSERT INTO t(rowid,x,y) VALUES (4,4,1.5),(2,2,x'00'),(1,1,'a'),(3,3,NULL);
                    INSERT INTO t VALUES (9,9); DELETE FROM t WHERE x=9;");
        let (da, db_) = (
            ContentDigest::read(&a).unwrap(),
            ContentDigest::read(&b).unwrap(),
        );
        assert_eq!(da.differences(&db_, "a", "b"), Vec::<String>::new());
    }

    #[test]
    fn a_changed_value_type_or_row_is_named() {
        let a = db("CREATE TABLE t(x); CREATE TABLE u(y); INSERT INTO t VALUES (1),(2);");
        let typed = db("CREATE TABLE t(x); CREATE TABLE u(y); INSERT INTO t VALUES (1),('2');");
        let fewer = db("CREATE TABLE t(x); CREATE TABLE u(y); INSERT INTO t VALUES (1);");
        let other = db("CREATE TABLE t(x); CREATE TABLE v(y); INSERT INTO t VALUES (1),(2);");
        let d = |c: &Connection| ContentDigest::read(c).unwrap();
        assert_eq!(
            d(&a).differences(&d(&typed), "live", "replica"),
            ["table t: same row count (2), different content"]
        );
        assert_eq!(
            d(&a).differences(&d(&fewer), "live", "replica"),
            ["table t: 2 rows in live, 1 in replica"]
        );
        assert_eq!(
            d(&a).differences(&d(&other), "live", "replica"),
            [
                "the schema differs between live and replica",
                "table u is in live but not in replica",
                "table v is in replica but not in live"
            ]
        );
    }
}
