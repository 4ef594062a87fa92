//! SQLite: opening databases, a deterministic logical dump to compare a source with
//! its restores, and the checks every restored database must pass.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

/// Opens (creating if needed) a database in WAL mode, with a 10 s busy timeout
/// and `synchronous=NORMAL`.
pub fn open_wal_db(path: impl AsRef<Path>) -> Connection {
    let path = path.as_ref();
    let conn = Connection::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    conn.busy_timeout(Duration::from_secs(10))
        .expect("setting busy_timeout");
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("setting WAL mode on {}: {e}", path.display()));
    assert_eq!(
        mode.to_ascii_lowercase(),
        "wal",
        "{} did not switch to WAL",
        path.display()
    );
    conn.pragma_update(None, "synchronous", "NORMAL")
        .expect("setting synchronous=NORMAL");
    conn
}

/// Opens an existing database read-only (never creates or modifies it).
pub fn open_read_only(path: impl AsRef<Path>) -> Connection {
    let path = path.as_ref();
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("opening {} read-only: {e}", path.display()));
    conn.busy_timeout(Duration::from_secs(10))
        .expect("setting busy_timeout");
    conn
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Renders one SQLite value unambiguously: `NULL`, `i:42`, `r:1.5` (shortest
/// round-trip form), `t:"escaped text"`, `x'00ff'` for blobs (and for text
/// that is not valid UTF-8, as `t:x'..'`).
pub fn render_value(v: ValueRef<'_>) -> String {
    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
    match v {
        ValueRef::Null => "NULL".to_string(),
        ValueRef::Integer(i) => format!("i:{i}"),
        ValueRef::Real(f) => format!("r:{f:?}"),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => format!("t:{s:?}"),
            Err(_) => format!("t:x'{}'", hex(t)),
        },
        ValueRef::Blob(b) => format!("x'{}'", hex(b)),
    }
}

/// A deterministic logical dump of the database at `path`, opened read-only.
///
/// Lines, in order:
/// - `pragma user_version=N`, `pragma application_id=N`;
/// - `schema <type> <name> <tbl_name> <sql>` for every row of `sqlite_schema`
///   ordered by type, name (root page numbers are left out);
/// - `row <table> [v1, v2, ...]` for every row of every ordinary table
///   (including `sqlite_sequence`), tables by name, rows by rowid (with the
///   rowid as the first value), or by all columns for `WITHOUT ROWID` tables.
///   Virtual tables are skipped (their shadow tables are ordinary tables).
///
/// Compare the dumps of a source and a restored database with `assert_eq!`.
pub fn dump(path: impl AsRef<Path>) -> Vec<String> {
    let path = path.as_ref();
    let conn = open_read_only(path);
    let ctx = |e: rusqlite::Error| -> String { format!("dumping {}: {e}", path.display()) };
    let mut out = Vec::new();

    // One read transaction, so the dump is a consistent snapshot even if
    // another connection writes meanwhile.
    conn.execute_batch("BEGIN")
        .unwrap_or_else(|e| panic!("{}", ctx(e)));

    for pragma in ["user_version", "application_id"] {
        let v: i64 = conn
            .query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{}", ctx(e)));
        out.push(format!("pragma {pragma}={v}"));
    }

    let mut stmt = conn
        .prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name")
        .unwrap_or_else(|e| panic!("{}", ctx(e)));
    let schema: Vec<(String, String, String, Option<String>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .and_then(|rows| rows.collect())
        .unwrap_or_else(|e| panic!("{}", ctx(e)));
    drop(stmt);
    for (ty, name, tbl, sql) in &schema {
        out.push(format!("schema {ty} {name:?} {tbl:?} {sql:?}"));
    }

    let mut tables: Vec<&String> = schema
        .iter()
        .filter(|(ty, _, _, sql)| {
            ty == "table"
                && !sql
                    .as_deref()
                    .unwrap_or("")
                    .trim_start()
                    .to_ascii_uppercase()
                    .starts_with("CREATE VIRTUAL")
        })
        .map(|(_, name, _, _)| name)
        .collect();
    tables.sort();
    for table in tables {
        let without_rowid: bool = conn
            .query_row(
                "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
                [table],
                |r| r.get(0),
            )
            .unwrap_or_else(|e| panic!("{}", ctx(e)));
        let q = quote_ident(table);
        let sql = if without_rowid {
            let ncols = conn
                .prepare(&format!("SELECT * FROM {q}"))
                .unwrap_or_else(|e| panic!("{}", ctx(e)))
                .column_count();
            let order: Vec<String> = (1..=ncols).map(|i| i.to_string()).collect();
            format!("SELECT * FROM {q} ORDER BY {}", order.join(", "))
        } else {
            format!("SELECT _rowid_, * FROM {q} ORDER BY _rowid_")
        };
        let mut stmt = conn.prepare(&sql).unwrap_or_else(|e| panic!("{}", ctx(e)));
        let n = stmt.column_count();
        let mut rows = stmt.query([]).unwrap_or_else(|e| panic!("{}", ctx(e)));
        while let Some(row) = rows.next().unwrap_or_else(|e| panic!("{}", ctx(e))) {
            let vals: Vec<String> = (0..n)
                .map(|i| render_value(row.get_ref(i).unwrap_or_else(|e| panic!("{}", ctx(e)))))
                .collect();
            out.push(format!("row {table:?} [{}]", vals.join(", ")));
        }
    }
    out
}

/// The rows of `PRAGMA integrity_check` (`["ok"]` for a sound database).
pub fn integrity_check(path: impl AsRef<Path>) -> Vec<String> {
    let conn = open_read_only(path);
    let mut stmt = conn
        .prepare("PRAGMA integrity_check")
        .expect("preparing integrity_check");
    stmt.query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect())
        .expect("running integrity_check")
}

/// `PRAGMA integrity_check` returns exactly `ok`.
pub fn integrity_ok(path: impl AsRef<Path>) -> bool {
    integrity_check(path) == ["ok"]
}

/// The dump without the bookkeeping tables Litestream adds to a database it replicates
/// (`_litestream_seq`, `_litestream_lock`).
pub fn user_dump(path: impl AsRef<Path>) -> Vec<String> {
    dump(path)
        .into_iter()
        .filter(|l| !l.contains("\"_litestream_"))
        .collect()
}

/// `assert_eq!` for dumps, with a short message (dumps of multi-MiB blobs are huge).
#[track_caller]
pub fn assert_dumps_eq(what: &str, expected: &[String], actual: &[String]) {
    if expected == actual {
        return;
    }
    let i = expected
        .iter()
        .zip(actual)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(actual.len()));
    let clip = |s: Option<&String>| match s {
        None => "<no line>".to_string(),
        Some(s) if s.len() > 300 => format!(
            "{}... ({} chars)",
            s.chars().take(300).collect::<String>(),
            s.len()
        ),
        Some(s) => s.clone(),
    };
    panic!(
        "{what}: dumps differ (expected {} lines, got {}); first difference at line {i}:\n  expected: {}\n  actual:   {}",
        expected.len(),
        actual.len(),
        clip(expected.get(i)),
        clip(actual.get(i))
    );
}

/// A restored database is complete in its file (no WAL) and has no pages past its
/// end: the file is exactly `page_count` pages long.
#[track_caller]
pub fn assert_file_is_exactly_the_database(path: &Path) {
    let conn = open_read_only(path);
    let (count, size): (i64, i64) = conn
        .query_row(
            "SELECT page_count, page_size FROM pragma_page_count, pragma_page_size",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("page_count");
    let len = std::fs::metadata(path).expect("stat").len();
    assert_eq!(
        i64::try_from(len).expect("file length"),
        count * size,
        "{} is {len} bytes but holds {count} pages of {size}",
        path.display()
    );
}
