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
