//! Runs the embedded example, loses the disk, restores through the library, and finds
//! every key in the shard its hash names.

use std::path::Path;
use std::process::Command;

use replica::Deployment;
use rusqlite::Connection;

fn fnv1a(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn count(path: &Path, sql: &str, key: &str) -> i64 {
    Connection::open(path)
        .expect("open")
        .query_row(sql, [key], |r| r.get(0))
        .expect("query")
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_service_loses_no_committed_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("replica.yml");
    std::fs::write(
        &cfg,
        format!(
            "replication:\n  enabled: true\n  mode: embedded\n  replica_url: file://{}\n  sync_interval: 200ms\nshards:\n  count: 4\n  path: ./data/shard_{{index}}.db\ndatabases:\n  - ./data/dlq.db\n",
            dir.path().join("replica").display()
        ),
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_replica-example-embedded"))
        .arg(&cfg)
        .arg("500")
        .output()
        .expect("running the example");
    assert!(
        out.status.success(),
        "the example failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    std::fs::remove_dir_all(dir.path().join("data")).expect("losing the disk");
    let dep = Deployment::from_config(&cfg).expect("config");
    let restored = dep.restore_missing().await.expect("restore");
    assert_eq!(restored.len(), 5);
    let data = dir.path().join("data");
    for i in 0..500 {
        let k = format!("key-{i}");
        let shard = data.join(format!("shard_{}.db", fnv1a(&k) % 4));
        assert_eq!(
            count(&shard, "SELECT count(*) FROM kv WHERE k = ?1", &k),
            1,
            "{k}"
        );
        if i % 10 == 0 {
            let dlq = data.join("dlq.db");
            assert_eq!(
                count(&dlq, "SELECT count(*) FROM kv WHERE k = ?1", &k),
                1,
                "dlq {k}"
            );
        }
    }
}

fn config(dir: &Path, data: &str) -> std::path::PathBuf {
    let cfg = dir.join(format!("{data}.yml"));
    std::fs::write(
        &cfg,
        format!(
            "replication:\n  enabled: true\n  mode: embedded\n  replica_url: file://{}\n  sync_interval: 200ms\nshards:\n  count: 2\n  path: ./{data}/shard_{{index}}.db\n",
            dir.join("replica").display()
        ),
    )
    .expect("config");
    cfg
}

/// `Running::sync` returns once what was committed before the call is in the store,
/// while replication goes on: a second deployment restores it from the replica.
#[tokio::test(flavor = "multi_thread")]
async fn sync_returns_once_every_database_has_its_commits_in_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Deployment::from_config(&config(dir.path(), "data")).expect("config");
    let shards: Vec<std::path::PathBuf> = primary
        .config
        .databases
        .iter()
        .map(|d| d.path.clone())
        .collect();
    std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
    let conns: Vec<Connection> = shards
        .iter()
        .map(|p| {
            let c = Connection::open(p).expect("open");
            c.execute_batch(
                "PRAGMA journal_mode=WAL; CREATE TABLE kv(k TEXT PRIMARY KEY, v TEXT);",
            )
            .expect("schema");
            c
        })
        .collect();
    primary.check_shards().await.expect("shards");
    let running = primary.start().await.expect("start");

    for (i, c) in conns.iter().enumerate() {
        for n in 0..50 {
            c.execute("INSERT INTO kv VALUES (?1, 'v')", [format!("{i}-{n}")])
                .expect("insert");
        }
    }
    let synced = running
        .sync(std::time::Duration::from_secs(30))
        .await
        .expect("sync");
    assert_eq!(synced.len(), shards.len());
    assert!(synced.iter().all(|(_, txid)| *txid >= 2), "{synced:?}");

    // Replication still runs: nothing was flushed by a shutdown. (A restore that
    // does not take the lease: `restore_missing` would wait for this one's.)
    let reader = Deployment::from_config(&config(dir.path(), "copy")).expect("config");
    let template = replica::core::restore::RestoreOptions::new(std::path::PathBuf::new());
    let restored = reader.restore(&[], template).await.expect("restore");
    assert_eq!(restored.len(), shards.len());
    for i in 0..shards.len() {
        let copy = dir.path().join("copy").join(format!("shard_{i}.db"));
        assert_eq!(
            count(
                &copy,
                "SELECT count(*) FROM kv WHERE k LIKE ?1",
                &format!("{i}-%")
            ),
            50,
            "shard {i}"
        );
    }
    running
        .shutdown(std::time::Duration::from_secs(30))
        .await
        .expect("shutdown");
}
