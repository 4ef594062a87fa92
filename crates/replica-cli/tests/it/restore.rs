//! `replica restore`: to a TXID and to a timestamp through a replica's history, and
//! the flags about existing outputs and missing replicas.

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::support::{
    Env, Proc, SCHEMA, assert_dumps_eq, assert_restore_matches_source, dir_listing, dump,
    insert_rows, integrity_check, ltx_list, max_txid, open_wal_db, random_blob, replica_cmd,
    restore, restore_dump, restored_dump, run, start_replicator, stop_clean, tx, txid_hex,
    wait_for_txid,
};

// ---------------------------------------------------------------------------
// Point in time

/// A committed phase: the replica's max TXID once it was uploaded, the creation time of
/// that file, and the source's dump at that point.
#[derive(Debug)]
struct Phase {
    txid: u64,
    created: OffsetDateTime,
    dump: Vec<String>,
}

/// Runs `write` (exactly one transaction), waits until the replica grows past the TXID
/// it had before, and records the phase. Sound because nothing else commits meanwhile:
/// every earlier commit is in files at or below the old max, and the only commit that
/// can produce a newer file is this one.
#[track_caller]
fn phase(rep: &mut Proc, env: &Env, write: impl FnOnce()) -> Phase {
    let before = max_txid(&env.url);
    write();
    wait_for_txid(rep, &env.url, before + 1);
    let files = ltx_list(&env.url);
    let txid = files.iter().map(|f| f.max).max().unwrap_or(0);
    let newest = files
        .iter()
        .find(|f| f.max == txid)
        .unwrap_or_else(|| panic!("no file ends at {txid}: {files:?}"));
    assert_eq!(
        (newest.level, newest.min),
        (0, before + 1),
        "one transaction should give one L0 file right after {before}: {files:?}"
    );
    assert_eq!(
        newest.key,
        format!("ltx/0/{}-{}.ltx", txid_hex(txid), txid_hex(txid)),
        "L0 files are laid out as Litestream's"
    );
    Phase {
        txid,
        created: newest.created,
        dump: dump(&env.db),
    }
}

#[test]
fn point_in_time_restore_by_txid_and_timestamp() {
    let env = Env::new();
    let conn = open_wal_db(&env.db);
    conn.execute_batch(SCHEMA).expect("schema");
    conn.execute("INSERT INTO t(k, v, n) VALUES ('seed', 'seed', 0)", [])
        .expect("seed");
    let mut rng = StdRng::seed_from_u64(6);
    let mut rep = start_replicator(&env.db, &env.url);
    wait_for_txid(&mut rep, &env.url, 1);
    let base = dump(&env.db);

    let mut phases = Vec::new();
    phases.push(phase(&mut rep, &env, || {
        tx(&conn, |c| insert_rows(c, "p1", 500, 100, &mut rng));
    }));
    phases.push(phase(&mut rep, &env, || {
        conn.execute_batch(
            "BEGIN;
             UPDATE t SET n = n + 1000, v = 'p2' WHERE id % 2 = 0;
             DELETE FROM t WHERE id % 5 = 0;
             INSERT INTO kv VALUES ('phase', 2);
             COMMIT;",
        )
        .expect("phase 2");
    }));
    // Keep the creation times of consecutive phases apart by more than a millisecond.
    std::thread::sleep(Duration::from_millis(5));
    phases.push(phase(&mut rep, &env, || {
        tx(&conn, |c| {
            c.execute_batch("CREATE TABLE big(id INTEGER PRIMARY KEY, data BLOB)")
                .expect("create");
            c.execute(
                "INSERT INTO big(data) VALUES (?1)",
                [random_blob(&mut rng, 1 << 20)],
            )
            .expect("blob");
            c.execute("UPDATE kv SET v = 3 WHERE k = 'phase'", [])
                .expect("kv");
        });
    }));
    std::thread::sleep(Duration::from_millis(5));
    phases.push(phase(&mut rep, &env, || {
        conn.execute("DELETE FROM t WHERE id > 100", [])
            .expect("phase 4");
    }));
    stop_clean(&mut rep);

    for w in phases.windows(2) {
        assert!(
            w[0].dump != w[1].dump,
            "phases must differ for the test to mean anything"
        );
        assert!(
            w[0].created < w[1].created,
            "phase files not ordered in time: {phases:?}"
        );
    }

    // --txid: the snapshot, every phase, and the latest state.
    let at1 = restore_dump(&env.url, &env.path("txid-1.db"), &["--txid", &txid_hex(1)]);
    assert_dumps_eq("restore --txid 1 (first snapshot)", &base, &at1);
    for (i, p) in phases.iter().enumerate() {
        let out = env.path(&format!("txid-{}.db", p.txid));
        let got = restore_dump(&env.url, &out, &["--txid", &txid_hex(p.txid)]);
        assert_dumps_eq(&format!("restore --txid of phase {}", i + 1), &p.dump, &got);
    }
    let last = phases.last().expect("phases");
    assert_dumps_eq("last phase vs final source", &dump(&env.db), &last.dump);
    assert_restore_matches_source(&env, "latest.db");

    // --timestamp between two phases' files gives the earlier phase. (The behaviour
    // exactly at a file's creation time is checked against Litestream in interop.rs.)
    for (i, w) in phases.windows(2).enumerate() {
        let mid: OffsetDateTime = w[0].created + (w[1].created - w[0].created) / 2i32;
        assert!(w[0].created < mid && mid < w[1].created);
        let ts = mid.format(&Rfc3339).expect("format");
        let out = env.path(&format!("ts-{}.db", i + 1));
        let got = restore_dump(&env.url, &out, &["--timestamp", &ts]);
        assert_dumps_eq(
            &format!(
                "restore --timestamp {ts} (between phases {} and {})",
                i + 1,
                i + 2
            ),
            &w[0].dump,
            &got,
        );
    }
    // After the last file: the latest state.
    let ts = (last.created + time::Duration::hours(1))
        .format(&Rfc3339)
        .expect("format");
    let got = restore_dump(&env.url, &env.path("ts-late.db"), &["--timestamp", &ts]);
    assert_dumps_eq("restore --timestamp after the last file", &last.dump, &got);
    // Before the first snapshot: nothing to restore, an error, and no output.
    let ts = (phases[0].created - time::Duration::hours(1))
        .format(&Rfc3339)
        .expect("format");
    let early = env.path("ts-early.db");
    let o = restore(&env.url, &early, &["--timestamp", &ts]);
    assert_eq!(
        o.code(),
        Some(1),
        "restore --timestamp before any file\n{o}"
    );
    assert!(!early.exists(), "a failed restore created its output");
}

// ---------------------------------------------------------------------------
// Direct writes

/// Without an integrity check the snapshot is written around the page cache. Small
/// pages and an odd size make runs that end unaligned (those go through the page
/// cache): the restore must still be exactly the source, later changes included.
#[test]
fn unchecked_restore_writes_directly_and_matches() {
    let env = Env::new();
    {
        let c = rusqlite::Connection::open(&env.db).expect("create");
        c.pragma_update(None, "page_size", 1024).expect("page_size");
        c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .expect("journal_mode=WAL");
    }
    let conn = open_wal_db(&env.db);
    conn.execute_batch(SCHEMA).expect("schema");
    let mut rng = StdRng::seed_from_u64(21);
    // About 9 MiB: two full runs of 4 MiB and a partial one.
    for i in 0..9 {
        tx(&conn, |c| {
            insert_rows(c, &format!("s{i}"), 1000, 1000, &mut rng)
        });
    }
    let mut rep = start_replicator(&env.db, &env.url);
    wait_for_txid(&mut rep, &env.url, 1);
    let before = max_txid(&env.url);
    tx(&conn, |c| insert_rows(c, "after", 50, 200, &mut rng));
    wait_for_txid(&mut rep, &env.url, before + 1);
    stop_clean(&mut rep);

    let out = env.path("unchecked.db");
    let o = run(replica_cmd()
        .env("REPLICA_LOG", "replica_core=debug")
        .args(["restore", "--integrity-check", "none", "-o"])
        .arg(&out)
        .arg(&env.url));
    let restored = restored_dump("replica restore --integrity-check none", &o, &out);
    assert!(
        o.stderr.contains("snapshot written") && o.stderr.contains("direct=true"),
        "the snapshot did not go around the page cache (this test needs a filesystem \
         with O_DIRECT, such as ext4 or xfs, under the temp dir)\n{o}"
    );
    assert_eq!(integrity_check(&out), ["ok"]);
    assert_dumps_eq("unchecked restore vs source", &dump(&env.db), &restored);
}

// ---------------------------------------------------------------------------
// Restore flags

/// A small replica, replicated and stopped.
fn small_replica(env: &Env) {
    let conn = open_wal_db(&env.db);
    conn.execute_batch(SCHEMA).expect("schema");
    let mut rng = StdRng::seed_from_u64(9);
    tx(&conn, |c| insert_rows(c, "x", 100, 50, &mut rng));
    let mut rep = start_replicator(&env.db, &env.url);
    wait_for_txid(&mut rep, &env.url, 1);
    tx(&conn, |c| insert_rows(c, "y", 10, 50, &mut rng));
    stop_clean(&mut rep);
}

#[test]
fn restore_if_db_not_exists_leaves_existing_output_untouched() {
    let env = Env::new();
    small_replica(&env);
    let outdir = env.path("out");
    std::fs::create_dir(&outdir).expect("mkdir");
    let out = outdir.join("existing.db");
    let content = b"not a database, and it must stay exactly like this\n".repeat(100);
    std::fs::write(&out, &content).expect("write");

    let o = restore(&env.url, &out, &["--if-db-not-exists"]);
    assert_eq!(
        o.code(),
        Some(0),
        "--if-db-not-exists with an existing output\n{o}"
    );
    assert_eq!(
        std::fs::read(&out).expect("read"),
        content,
        "the existing file changed"
    );
    assert_eq!(
        dir_listing(&outdir),
        ["existing.db"],
        "restore left files behind"
    );

    // The flag does not prevent a real restore when the output is missing.
    let fresh = env.path("fresh.db");
    let got = restore_dump(&env.url, &fresh, &["--if-db-not-exists"]);
    assert_dumps_eq(
        "--if-db-not-exists with a missing output",
        &dump(&env.db),
        &got,
    );
}

#[test]
fn restore_onto_existing_path_fails_and_leaves_it_untouched() {
    let env = Env::new();
    small_replica(&env);
    let outdir = env.path("out");
    std::fs::create_dir(&outdir).expect("mkdir");

    // An existing non-database file, and an existing database.
    let junk = outdir.join("junk.db");
    let content = vec![0xa5u8; 10_000];
    std::fs::write(&junk, &content).expect("write");
    let o = restore(&env.url, &junk, &[]);
    assert_eq!(
        o.code(),
        Some(1),
        "restore onto an existing file must fail with 1\n{o}"
    );
    assert_eq!(
        std::fs::read(&junk).expect("read"),
        content,
        "the existing file changed"
    );

    let other = outdir.join("other.db");
    {
        let c = open_wal_db(&other);
        c.execute_batch("CREATE TABLE mine(x); INSERT INTO mine VALUES (1);")
            .expect("other db");
    }
    let before = std::fs::read(&other).expect("read");
    let o = restore(&env.url, &other, &[]);
    assert_eq!(
        o.code(),
        Some(1),
        "restore onto an existing database must fail with 1\n{o}"
    );
    assert_eq!(
        std::fs::read(&other).expect("read"),
        before,
        "the existing database changed"
    );
    assert_eq!(
        dir_listing(&outdir),
        ["junk.db", "other.db"],
        "failed restores left files behind"
    );
}

#[test]
fn restore_if_replica_exists_on_empty_replica_is_a_no_op() {
    let env = Env::new();
    let replica_dir = env.path("empty-replica");
    std::fs::create_dir(&replica_dir).expect("mkdir");
    let url = format!("file://{}", replica_dir.display());
    let outdir = env.path("out");
    std::fs::create_dir(&outdir).expect("mkdir");
    let out = outdir.join("restored.db");

    let o = restore(&url, &out, &["--if-replica-exists"]);
    assert_eq!(
        o.code(),
        Some(0),
        "--if-replica-exists on an empty replica\n{o}"
    );
    assert!(!out.exists(), "an output was created from an empty replica");
    assert!(
        dir_listing(&outdir).is_empty(),
        "files were created: {:?}",
        dir_listing(&outdir)
    );
    assert!(
        dir_listing(&replica_dir).is_empty(),
        "the replica dir was written to: {:?}",
        dir_listing(&replica_dir)
    );

    // Without the flag the same restore is an error.
    let o = restore(&url, &out, &[]);
    assert_eq!(
        o.code(),
        Some(1),
        "restore from an empty replica without the flag\n{o}"
    );
    assert!(!out.exists());
}

#[test]
fn dry_run_writes_nothing_and_names_what_the_restore_reads() {
    let env = Env::new();
    small_replica(&env);
    let outdir = env.path("out");
    std::fs::create_dir(&outdir).expect("mkdir");
    let out = outdir.join("app.db");

    let plan = restore(&env.url, &out, &["--dry-run", "--json"]);
    assert_eq!(plan.code(), Some(0), "{plan}");
    assert!(
        dir_listing(&outdir).is_empty(),
        "a dry run wrote {:?}",
        dir_listing(&outdir)
    );
    let plan: serde_json::Value = serde_json::from_str(&plan.stdout).expect("plan JSON");
    assert_eq!(plan["action"], "restore", "{plan}");
    assert_eq!(
        plan["txid"],
        txid_hex(max_txid(&env.url)).as_str(),
        "{plan}"
    );
    let files = plan["files"].as_array().expect("files");
    let listed = ltx_list(&env.url);
    for f in files {
        let key = f["key"].as_str().expect("key");
        let size = listed.iter().find(|l| l.key == key).map(|l| l.size);
        assert_eq!(size, f["size"].as_u64(), "{key} in {plan}");
    }
    let bytes: u64 = files.iter().filter_map(|f| f["size"].as_u64()).sum();
    assert_eq!(plan["bytes"].as_u64(), Some(bytes), "{plan}");

    // The real restore reads exactly the planned files and reports the same point.
    let done = restore(&env.url, &out, &["--json"]);
    assert_eq!(done.code(), Some(0), "{done}");
    let done: serde_json::Value = serde_json::from_str(&done.stdout).expect("result JSON");
    assert_eq!(done["action"], "restored", "{done}");
    assert_eq!(done["txid"], plan["txid"], "{done}");
    assert_eq!(done["files"].as_u64(), Some(files.len() as u64), "{done}");
    assert_eq!(done["bytes_downloaded"].as_u64(), Some(bytes), "{done}");
    assert_dumps_eq("restore after a dry run", &dump(&env.db), &dump(&out));

    // A dry run onto an existing output fails as the restore would, naming the fix.
    let again = restore(&env.url, &out, &["--dry-run"]);
    assert_eq!(again.code(), Some(1), "{again}");
    assert!(again.stderr.contains("--if-db-not-exists"), "{again}");
}
