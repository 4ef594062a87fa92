//! Interoperability with Litestream 0.5.17, the reference implementation, in both
//! directions:
//! - a replica written by `replica replicate` restores with `litestream restore`
//!   (latest and `-txid`) to the same content as with `replica restore`;
//! - a replica written by `litestream replicate` restores with `replica restore`
//!   (latest and `--txid`) to the same content as with `litestream restore`.
//!
//! A missing Litestream binary fails these tests (see `support::litestream_bin`).

use std::path::Path;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rusqlite::Connection;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::support::{
    Env, LtxFile, Output, Proc, SCHEMA, UPLOAD_TIMEOUT, assert_dumps_eq, dump, insert_rows,
    integrity_check, litestream_restore, ltx_list, max_txid, open_wal_db, random_blob, restore,
    restored_dump, start_litestream, start_replicator, stop_clean, tx, txid_hex, user_dump,
    wait_for_txid, wait_until,
};

/// Restores with both tools (latest, or up to `txid`), asserts both succeed with sound
/// databases and identical dumps, and returns the dump.
#[track_caller]
fn restore_both(env: &Env, name: &str, txid: Option<u64>) -> Vec<String> {
    let ours = env.path(&format!("{name}.replica.db"));
    let theirs = env.path(&format!("{name}.litestream.db"));
    let at = txid.map_or("latest".to_string(), txid_hex);
    let (ours_args, theirs_args) = match txid {
        Some(_) => (vec!["--txid", at.as_str()], vec!["-txid", at.as_str()]),
        None => (vec![], vec![]),
    };
    let a = restored_dump(
        &format!("replica restore ({at})"),
        &restore(&env.url, &ours, &ours_args),
        &ours,
    );
    let b = restored_dump(
        &format!("litestream restore ({at})"),
        &litestream_restore(&env.url, &theirs, &theirs_args),
        &theirs,
    );
    assert_dumps_eq(
        &format!("litestream restore vs replica restore ({at})"),
        &b,
        &a,
    );
    a
}

/// A mixed workload of `steps` transactions spread over time (`pause` between them):
/// inserts of varied size, updates, deletes, a multi-MiB blob at `blob_at` and a
/// `VACUUM` after a mass delete at `vacuum_at`.
fn workload(
    conn: &Connection,
    rng: &mut StdRng,
    steps: usize,
    pause: Duration,
    blob_at: usize,
    vacuum_at: usize,
) {
    for step in 0..steps {
        if step == blob_at {
            conn.execute(
                "INSERT INTO blobs(data) VALUES (?1)",
                [random_blob(rng, (3 << 20) + 4321)],
            )
            .expect("blob");
        } else if step == vacuum_at {
            conn.execute("DELETE FROM t WHERE id % 4 != 0", [])
                .expect("mass delete");
            conn.execute("DELETE FROM blobs WHERE id % 2 = 1", [])
                .expect("blob delete");
            conn.execute_batch("VACUUM").expect("VACUUM");
        } else {
            match step % 3 {
                0 => {
                    let n = [1usize, 10, 200, 1500][step / 3 % 4];
                    tx(conn, |c| insert_rows(c, &format!("s{step}"), n, 100, rng));
                }
                1 => {
                    conn.execute(
                        "UPDATE t SET v = upper(v), n = n + 1 WHERE n % 5 = ?1",
                        [step as i64 % 5],
                    )
                    .expect("update");
                }
                _ => tx(conn, |c| {
                    c.execute("DELETE FROM t WHERE n % 9 = ?1", [step as i64 % 9])
                        .expect("delete");
                    insert_rows(c, &format!("d{step}"), 20, 300, rng);
                }),
            }
        }
        std::thread::sleep(pause);
    }
}

fn new_db(path: &Path) -> Connection {
    let conn = open_wal_db(path);
    conn.execute_batch(SCHEMA).expect("schema");
    conn
}

// ---------------------------------------------------------------------------
// (a) replica writes, Litestream restores

#[test]
fn litestream_restores_what_replica_replicated() {
    let env = Env::new();
    let conn = new_db(&env.db);
    let mut rng = StdRng::seed_from_u64(100);
    tx(&conn, |c| insert_rows(c, "pre", 300, 100, &mut rng));
    let mut rep = start_replicator(&env.db, &env.url);
    wait_for_txid(&mut rep, &env.url, 1);

    workload(&conn, &mut rng, 30, Duration::from_millis(60), 8, 20);
    stop_clean(&mut rep);

    let files = ltx_list(&env.url);
    assert!(
        files.iter().filter(|f| f.level == 0).count() >= 5,
        "expected many L0 files (several syncs), got {files:?}"
    );
    assert!(files.iter().any(|f| f.level == 9), "no snapshot: {files:?}");

    let source = dump(&env.db);
    assert_eq!(integrity_check(&env.db), ["ok"]);
    let restored = restore_both(&env, "latest", None);
    assert_dumps_eq("restored latest vs source", &source, &restored);

    // A few TXIDs through the history (the VACUUM and the blob are in the middle),
    // taken at file boundaries (files that piled up may be merged into one L0 covering
    // several TXIDs, and a restore can only stop at a file's end).
    let mut ends: Vec<u64> = files
        .iter()
        .filter(|f| f.level == 0)
        .map(|f| f.max)
        .collect();
    ends.sort_unstable();
    let picks = [
        ends[ends.len() / 4],
        ends[ends.len() / 2],
        ends[ends.len() * 3 / 4],
    ];
    let mut previous: Option<Vec<String>> = None;
    for t in picks {
        let d = restore_both(&env, &format!("txid-{t}"), Some(t));
        assert!(
            previous.as_ref() != Some(&d),
            "restores at different TXIDs gave the same content; the test would prove nothing"
        );
        previous = Some(d);
    }
}

/// One transaction, waited for until the replica's max TXID grows: the new file holds
/// exactly that transaction (nothing else commits meanwhile).
#[track_caller]
fn replica_phase(rep: &mut Proc, env: &Env, write: impl FnOnce()) -> (u64, Vec<String>) {
    let before = max_txid(&env.url);
    write();
    wait_for_txid(rep, &env.url, before + 1);
    (max_txid(&env.url), dump(&env.db))
}

#[test]
fn txid_restores_of_replica_written_replica_match_litestream() {
    let env = Env::new();
    let conn = new_db(&env.db);
    let mut rng = StdRng::seed_from_u64(101);
    tx(&conn, |c| insert_rows(c, "pre", 100, 100, &mut rng));
    let mut rep = start_replicator(&env.db, &env.url);
    wait_for_txid(&mut rep, &env.url, 1);

    let mut phases = vec![(1, dump(&env.db))];
    phases.push(replica_phase(&mut rep, &env, || {
        tx(&conn, |c| insert_rows(c, "p1", 2000, 200, &mut rng));
    }));
    phases.push(replica_phase(&mut rep, &env, || {
        conn.execute(
            "INSERT INTO blobs(data) VALUES (?1)",
            [random_blob(&mut rng, 2 << 20)],
        )
        .expect("blob");
    }));
    phases.push(replica_phase(&mut rep, &env, || {
        conn.execute("DELETE FROM t WHERE id % 3 != 0", [])
            .expect("delete");
    }));
    phases.push(replica_phase(&mut rep, &env, || {
        conn.execute_batch("VACUUM").expect("VACUUM");
    }));
    phases.push(replica_phase(&mut rep, &env, || {
        tx(&conn, |c| {
            insert_rows(c, "p5", 50, 100, &mut rng);
            c.execute("UPDATE t SET n = -1 WHERE id % 2 = 0", [])
                .expect("update");
        });
    }));
    stop_clean(&mut rep);

    for (i, (txid, expected)) in phases.iter().enumerate() {
        let got = restore_both(&env, &format!("phase{i}"), Some(*txid));
        // VACUUM rewrites pages but not content: that phase's dump equals the previous.
        assert_dumps_eq(
            &format!(
                "restore at TXID {} (phase {i}) vs the source then",
                txid_hex(*txid)
            ),
            expected,
            &got,
        );
    }
}

/// A restarted replicator that cannot prove continuity writes a new snapshot (level 9,
/// from TXID 1) on top of the history; Litestream must pick the same chains.
#[test]
fn litestream_restores_replica_history_across_a_restart_snapshot() {
    let env = Env::new();
    let conn = new_db(&env.db);
    let mut rng = StdRng::seed_from_u64(102);
    let mut rep = start_replicator(&env.db, &env.url);
    wait_for_txid(&mut rep, &env.url, 1);
    workload(&conn, &mut rng, 8, Duration::from_millis(50), 100, 100);
    stop_clean(&mut rep);
    let first_max = max_txid(&env.url);
    let first_dump = dump(&env.db);

    // While down: enough to make SQLite checkpoint, then the WAL goes away.
    for i in 0..5 {
        tx(&conn, |c| {
            insert_rows(c, &format!("down{i}"), 1000, 800, &mut rng)
        });
    }
    drop(conn);
    let conn = open_wal_db(&env.db);
    let mut rep = start_replicator(&env.db, &env.url);
    workload(&conn, &mut rng, 8, Duration::from_millis(50), 3, 6);
    stop_clean(&mut rep);

    let files = ltx_list(&env.url);
    assert!(
        files.iter().filter(|f| f.level == 9).count() >= 2,
        "expected a second snapshot after the restart: {files:?}"
    );
    let latest = restore_both(&env, "latest", None);
    assert_dumps_eq("latest restore vs source", &dump(&env.db), &latest);
    let before = restore_both(&env, "before-restart", Some(first_max));
    assert_dumps_eq("restore at the last pre-restart TXID", &first_dump, &before);
}

/// `--timestamp` picks the same files as Litestream's `-timestamp`: between two files'
/// creation times, and exactly at a file's creation time (the boundary).
#[test]
fn timestamp_restores_of_replica_written_replica_match_litestream() {
    let env = Env::new();
    let conn = new_db(&env.db);
    let mut rng = StdRng::seed_from_u64(103);
    tx(&conn, |c| insert_rows(c, "pre", 100, 100, &mut rng));
    let mut rep = start_replicator(&env.db, &env.url);
    wait_for_txid(&mut rep, &env.url, 1);
    let mut phases = vec![(1, dump(&env.db))];
    for i in 0..3 {
        // Keep consecutive files' creation times apart.
        std::thread::sleep(Duration::from_millis(5));
        phases.push(replica_phase(&mut rep, &env, || {
            tx(&conn, |c| {
                insert_rows(c, &format!("p{i}"), 200, 100, &mut rng)
            });
        }));
    }
    stop_clean(&mut rep);

    // Compaction may have merged some of them into L1 as well; the boundaries probed
    // are those of the per-phase L0 files and the snapshot.
    let mut files: Vec<LtxFile> = ltx_list(&env.url)
        .into_iter()
        .filter(|f| f.level == 0 || f.level == 9)
        .collect();
    files.sort_by_key(|f| f.max);
    assert_eq!(
        files.iter().map(|f| f.max).collect::<Vec<_>>(),
        phases.iter().map(|p| p.0).collect::<Vec<_>>(),
        "one file per phase expected"
    );
    let mut mismatches = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let mut times = vec![("exactly at the file's creation time", f.created)];
        if let Some(next) = files.get(i + 1) {
            assert!(
                f.created < next.created,
                "creation times not increasing: {files:?}"
            );
            let mid: OffsetDateTime = f.created + (next.created - f.created) / 2i32;
            times.push(("between this file and the next", mid));
        }
        for (j, (what, t)) in times.into_iter().enumerate() {
            let ts = t.format(&Rfc3339).expect("format");
            let ours = env.path(&format!("ts-{i}-{j}.replica.db"));
            let theirs = env.path(&format!("ts-{i}-{j}.litestream.db"));
            let a = restore(&env.url, &ours, &["--timestamp", &ts]);
            let b = litestream_restore(&env.url, &theirs, &["-timestamp", &ts]);
            let content = |o: &Output, p: &Path| o.success().then(|| dump(p));
            let (ca, cb) = (content(&a, &ours), content(&b, &theirs));
            if ca != cb {
                let describe = |c: &Option<Vec<String>>| match c {
                    None => "failed".to_string(),
                    Some(d) => match phases.iter().position(|p| &p.1 == d) {
                        Some(k) => format!("the state at TXID {}", txid_hex(phases[k].0)),
                        None => "a state matching no phase".to_string(),
                    },
                };
                mismatches.push(format!(
                    "--timestamp {ts} ({what} of {}): replica restore gave {}, litestream restore gave {}",
                    txid_hex(f.max),
                    describe(&ca),
                    describe(&cb)
                ));
            } else if what.starts_with("between") {
                // Unambiguous: everything up to this file, nothing after.
                assert_dumps_eq(
                    &format!(
                        "restore --timestamp {ts} vs the state at {}",
                        txid_hex(f.max)
                    ),
                    &phases[i].1,
                    ca.as_deref().unwrap_or_default(),
                );
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "replica and Litestream disagree on point-in-time restores:\n{}",
        mismatches.join("\n")
    );
}

// ---------------------------------------------------------------------------
// (b) Litestream writes, replica restores

/// Waits until `litestream restore` of the latest state has the source's user tables:
/// then everything committed so far is in the replica.
#[track_caller]
fn wait_litestream_caught_up(ls: &mut Proc, env: &Env, expected: &[String]) {
    let mut n = 0;
    let mut last = String::new();
    let ok = wait_until(UPLOAD_TIMEOUT, || {
        if !ls.is_running() {
            return true;
        }
        n += 1;
        let out = env.path(&format!("probe-{n}.db"));
        let o = litestream_restore(&env.url, &out, &[]);
        let caught_up = o.success() && user_dump(&out) == expected;
        if !o.success() {
            last = o.to_string();
        }
        let _ = std::fs::remove_file(&out);
        if !caught_up {
            std::thread::sleep(Duration::from_millis(200));
        }
        caught_up
    });
    let running = ls.is_running();
    assert!(
        ok && running,
        "Litestream's replica did not catch up with the source within {UPLOAD_TIMEOUT:?} \
         (running: {running}, files: {:?}, last failed probe: {last})\n{}",
        ltx_list(&env.url),
        ls.output_report()
    );
}

#[test]
fn replica_restores_what_litestream_replicated() {
    let env = Env::new();
    let conn = new_db(&env.db);
    let mut rng = StdRng::seed_from_u64(200);
    tx(&conn, |c| insert_rows(c, "pre", 500, 100, &mut rng));
    let mut ls = start_litestream(&env.db, &env.url);
    wait_for_txid(&mut ls, &env.url, 1);

    // About 3.5 s of writes at Litestream's 1 s sync interval: several L0 files.
    workload(&conn, &mut rng, 24, Duration::from_millis(150), 5, 16);
    wait_litestream_caught_up(&mut ls, &env, &user_dump(&env.db));
    stop_clean(&mut ls);

    let files = ltx_list(&env.url);
    assert!(
        files.iter().filter(|f| f.level == 0).count() >= 3,
        "expected several L0 files from Litestream, got {files:?}"
    );
    assert!(
        files.iter().any(|f| f.level == 9 && f.min == 1),
        "expected Litestream's L9 snapshot, got {files:?}"
    );

    assert_eq!(integrity_check(&env.db), ["ok"]);
    let source = dump(&env.db);
    assert!(
        source.iter().any(|l| l.contains("\"_litestream_seq\"")),
        "Litestream's tables are expected in the source"
    );
    let restored = restore_both(&env, "latest", None);
    assert_dumps_eq(
        "replica restore of Litestream's replica vs source",
        &source,
        &restored,
    );
}

#[test]
fn replica_txid_restores_of_litestream_replica() {
    let env = Env::new();
    let conn = new_db(&env.db);
    let mut rng = StdRng::seed_from_u64(201);
    tx(&conn, |c| insert_rows(c, "pre", 200, 100, &mut rng));
    let mut ls = start_litestream(&env.db, &env.url);
    wait_litestream_caught_up(&mut ls, &env, &user_dump(&env.db));

    // Each phase: write, wait until Litestream has it, note the replica's max TXID and
    // the source's user tables. Nothing of the next phase exists yet, so restoring at
    // that TXID must give exactly this phase.
    let mut phases: Vec<(u64, Vec<String>)> = Vec::new();
    let mut record = |ls: &mut Proc, write: &mut dyn FnMut()| {
        write();
        let expected = user_dump(&env.db);
        wait_litestream_caught_up(ls, &env, &expected);
        phases.push((max_txid(&env.url), expected));
    };
    record(&mut ls, &mut || {
        tx(&conn, |c| insert_rows(c, "p1", 1000, 150, &mut rng));
    });
    record(&mut ls, &mut || {
        conn.execute(
            "INSERT INTO blobs(data) VALUES (?1)",
            [random_blob(&mut rng, (2 << 20) + 99)],
        )
        .expect("blob");
        conn.execute("UPDATE t SET v = 'p2' WHERE id % 2 = 0", [])
            .expect("update");
    });
    record(&mut ls, &mut || {
        conn.execute("DELETE FROM t WHERE id % 5 != 0", [])
            .expect("delete");
        conn.execute_batch("VACUUM").expect("VACUUM");
    });
    record(&mut ls, &mut || {
        tx(&conn, |c| insert_rows(c, "p4", 30, 100, &mut rng));
    });
    stop_clean(&mut ls);

    let txids: Vec<u64> = phases.iter().map(|p| p.0).collect();
    assert!(
        txids.windows(2).all(|w| w[0] < w[1]),
        "each phase should have added files: {txids:?}"
    );
    for (i, (txid, expected)) in phases.iter().enumerate() {
        let out = env.path(&format!("phase{i}.replica.db"));
        let o = restore(&env.url, &out, &["--txid", &txid_hex(*txid)]);
        restored_dump(
            &format!("replica restore --txid {}", txid_hex(*txid)),
            &o,
            &out,
        );
        assert_dumps_eq(
            &format!(
                "replica restore --txid {} (phase {}) vs the source then",
                txid_hex(*txid),
                i + 1
            ),
            expected,
            &user_dump(&out),
        );
        // And the same, byte for byte in content, as Litestream's own restore.
        restore_both(&env, &format!("both-phase{i}"), Some(*txid));
    }
    let source = dump(&env.db);
    let latest = restore_both(&env, "latest", None);
    assert_dumps_eq("latest restore vs source", &source, &latest);
}
