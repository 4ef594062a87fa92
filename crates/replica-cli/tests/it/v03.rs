//! Moving from Litestream 0.3: replicas written by the real Litestream 0.3.13 (file://
//! and S3 on moto) while a writer runs through checkpoints and a restart that starts a
//! new generation, restored by `replica` at the latest state and at several times, and
//! compared with the writer's committed state and with `litestream restore` 0.3.13 at
//! the same points; damaged 0.3 objects; a path holding both 0.3 and LTX history.
//!
//! Litestream 0.3.13 comes from `REPLICA_LITESTREAM03_BIN` (set by `cargo xtask test`)
//! or `<cache>/venv-litestream03` (`cargo xtask litestream --legacy`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use crate::support::{
    self, Proc, SIGINT, SIGTERM, cache_dir, open_wal_db, replica_cmd, run, user_dump,
};
use rusqlite::Connection;
use tempfile::TempDir;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn env_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `cargo xtask test` (it starts the emulators)")
    })
}

fn litestream03_bin() -> PathBuf {
    const HINT: &str = "run the tests with `cargo xtask test`, or install it with \
                        `cargo xtask litestream --legacy` and point REPLICA_LITESTREAM03_BIN at the path it prints";
    if let Some(bin) = std::env::var_os("REPLICA_LITESTREAM03_BIN").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "REPLICA_LITESTREAM03_BIN={} does not exist; {HINT}",
            bin.display()
        );
        return bin;
    }
    let bin = cache_dir()
        .map(|d| d.join("venv-litestream03").join("bin").join("litestream"))
        .unwrap_or_else(|| panic!("no cache directory for Litestream 0.3.13; {HINT}"));
    assert!(
        bin.is_file(),
        "Litestream 0.3.13 not found at {}; {HINT}",
        bin.display()
    );
    bin
}

fn litestream03() -> Command {
    let mut cmd = Command::new(litestream03_bin());
    cmd.env_remove("AWS_CA_BUNDLE").stdin(Stdio::null());
    cmd
}

fn rfc3339(t: SystemTime) -> String {
    OffsetDateTime::from(t)
        .format(&Rfc3339)
        .expect("formatting a time")
}

/// Where the 0.3 replica lives: its yml replica block, and the URL `replica` reads.
struct Store {
    yml_replica: String,
    url: String,
    env: Vec<(String, String)>,
    /// What Litestream 0.3.13 needs in its environment.
    litestream_env: Vec<(String, String)>,
}

impl Store {
    fn file(dir: &Path) -> Store {
        let path = dir.join("replica");
        Store {
            yml_replica: format!("      - url: file://{}\n", path.display()),
            url: format!("file://{}", path.display()),
            env: Vec::new(),
            litestream_env: Vec::new(),
        }
    }

    /// A fresh bucket on the S3 emulator.
    fn s3() -> Store {
        let endpoint = std::env::var("REPLICA_S3_ENDPOINT").unwrap_or_else(|_| {
            panic!(
                "REPLICA_S3_ENDPOINT is not set: run `cargo xtask test` (it starts the S3 emulator)"
            )
        });
        let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
        let (key, secret) = (
            env("REPLICA_S3_ACCESS_KEY_ID", "test"),
            env("REPLICA_S3_SECRET_ACCESS_KEY", "test"),
        );
        let bucket = format!("v03-{:016x}", rand::random::<u64>());
        let hostport = endpoint
            .strip_prefix("http://")
            .expect("the emulator endpoint is http://");
        // moto does not check signatures, so a plain PUT creates the bucket.
        let mut conn = TcpStream::connect(hostport).expect("connecting to the S3 emulator");
        write!(
            conn,
            "PUT /{bucket} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .expect("sending CreateBucket");
        let mut resp = String::new();
        conn.read_to_string(&mut resp)
            .expect("reading CreateBucket");
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "CreateBucket failed: {resp}"
        );
        Store {
            yml_replica: format!(
                "      - type: s3\n        bucket: {bucket}\n        path: db\n        endpoint: {endpoint}\n        region: us-east-1\n        force-path-style: true\n        access-key-id: {key}\n        secret-access-key: {secret}\n"
            ),
            url: format!(
                "s3://{bucket}/db?endpoint={endpoint}&region=us-east-1&force_path_style=true"
            ),
            env: vec![
                ("AWS_ACCESS_KEY_ID".into(), key),
                ("AWS_SECRET_ACCESS_KEY".into(), secret),
                ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ],
            litestream_env: Vec::new(),
        }
    }

    /// A fresh directory on the SFTP server (0.3.13 does not check host keys; we do).
    fn sftp() -> Store {
        let key = PathBuf::from(env_var("REPLICA_SFTP_KEY"));
        let host_key_file = std::env::var("REPLICA_SFTP_HOST_KEY")
            .map(PathBuf::from)
            .unwrap_or_else(|_| key.with_file_name("host_ed25519.pub"));
        let host_key = std::fs::read_to_string(&host_key_file).expect("reading the host key");
        let host_key = host_key
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let (host, port, user) = (
            env_var("REPLICA_SFTP_HOST"),
            env_var("REPLICA_SFTP_PORT"),
            env_var("REPLICA_SFTP_USER"),
        );
        let root = format!(
            "{}/v03-{:016x}",
            env_var("REPLICA_SFTP_ROOT"),
            rand::random::<u64>()
        );
        let enc = |s: &str| {
            s.replace('%', "%25")
                .replace(' ', "%20")
                .replace('&', "%26")
                .replace('+', "%2B")
        };
        Store {
            yml_replica: format!(
                "      - type: sftp\n        host: \"{host}:{port}\"\n        user: {user}\n        key-path: {}\n        path: {root}\n",
                key.display()
            ),
            url: format!(
                "sftp://{user}@{host}:{port}{root}?key_path={}&host_key={}",
                enc(&key.display().to_string()),
                enc(&host_key)
            ),
            env: Vec::new(),
            litestream_env: Vec::new(),
        }
    }

    /// A fresh container on Azurite.
    fn abs() -> Store {
        let (endpoint, account, key) = (
            env_var("REPLICA_AZURE_ENDPOINT"),
            env_var("REPLICA_AZURE_ACCOUNT_NAME"),
            env_var("REPLICA_AZURE_ACCOUNT_KEY"),
        );
        let container = format!("v03-{:016x}", rand::random::<u64>());
        support::create_abs_container(&endpoint, &account, &key, &container);
        Store {
            yml_replica: format!(
                "      - type: abs\n        account-name: {account}\n        account-key: \"{key}\"\n        bucket: {container}\n        path: db\n        endpoint: \"{endpoint}\"\n"
            ),
            url: format!("abs://{account}@{container}/db?endpoint={endpoint}"),
            env: vec![
                ("AZURE_STORAGE_ACCOUNT".into(), account),
                ("AZURE_STORAGE_KEY".into(), key),
            ],
            litestream_env: Vec::new(),
        }
    }

    /// A fresh bucket on fake-gcs-server (anonymous: a plain JSON API insert creates
    /// it); Litestream 0.3.13 finds the emulator through STORAGE_EMULATOR_HOST.
    fn gcs() -> Store {
        let endpoint = env_var("REPLICA_GCS_ENDPOINT");
        let bucket = format!("v03-{:016x}", rand::random::<u64>());
        let hostport = endpoint
            .strip_prefix("http://")
            .expect("the emulator endpoint is http://")
            .trim_end_matches('/');
        let body = format!("{{\"name\":\"{bucket}\"}}");
        let mut conn = TcpStream::connect(hostport).expect("connecting to the GCS emulator");
        write!(
            conn,
            "POST /storage/v1/b?project=test HTTP/1.1\r\nHost: {hostport}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("sending buckets.insert");
        let mut resp = String::new();
        conn.read_to_string(&mut resp)
            .expect("reading buckets.insert");
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "buckets.insert failed: {resp}"
        );
        Store {
            yml_replica: format!("      - type: gcs\n        bucket: {bucket}\n        path: db\n"),
            url: format!("gs://{bucket}/db?endpoint={endpoint}"),
            env: Vec::new(),
            litestream_env: vec![("STORAGE_EMULATOR_HOST".into(), endpoint)],
        }
    }

    fn replica(&self) -> Command {
        let mut cmd = replica_cmd();
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

/// A database replicated by Litestream 0.3.13, with the writer's state at known times.
struct Produced {
    dir: TempDir,
    db: PathBuf,
    config: PathBuf,
    /// (time, the writer's committed user rows at that time).
    points: Vec<(SystemTime, Vec<String>)>,
    /// The final committed state.
    last: Vec<String>,
}

fn write_burst(conn: &Connection, next: &mut i64, commits: usize) {
    for _ in 0..commits {
        let k = *next;
        *next += 1;
        conn.execute_batch("BEGIN").expect("begin");
        conn.execute(
            "INSERT INTO t(id, v, b) VALUES (?1, 'row ' || ?1, randomblob(?2))",
            (k, 500 + (k * 373) % 2500),
        )
        .expect("insert");
        if k % 5 == 0 {
            conn.execute(
                "UPDATE t SET v = v || ' updated at ' || ?1 WHERE id = ?1 - 3",
                [k],
            )
            .expect("update");
        }
        if k % 7 == 0 {
            conn.execute("DELETE FROM t WHERE id = ?1 - 6", [k])
                .expect("delete");
        }
        conn.execute_batch("COMMIT").expect("commit");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn start_litestream(config: &Path, store: &Store) -> Proc {
    let mut cmd = litestream03();
    cmd.envs(store.litestream_env.iter().map(|(k, v)| (k, v)))
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS");
    cmd.arg("replicate").arg("-config").arg(config);
    Proc::spawn("litestream 0.3.13 replicate", cmd)
}

/// Runs the writer under Litestream 0.3.13: bursts of commits, each followed by a quiet
/// moment whose time is recorded with the state (so a restore at that time has exactly
/// that state), frequent checkpoints (new WAL indexes), and a restart after an
/// application TRUNCATE checkpoint, which makes 0.3 start a new generation.
fn produce(store_for: impl FnOnce(&Path) -> Store) -> (Produced, Store) {
    let dir = tempfile::Builder::new()
        .prefix("replica-v03-")
        .tempdir()
        .expect("tempdir");
    let store = store_for(dir.path());
    let db = dir.path().join("app.db");
    let config = dir.path().join("litestream.yml");
    std::fs::write(
        &config,
        format!(
            "dbs:\n  - path: {}\n    monitor-interval: 100ms\n    checkpoint-interval: 1s\n    min-checkpoint-page-count: 20\n    replicas:\n{}        sync-interval: 100ms\n",
            db.display(),
            store.yml_replica
        ),
    )
    .expect("writing the Litestream config");
    let conn = open_wal_db(&db);
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB)")
        .expect("schema");

    let mut next = 1;
    let mut points = Vec::new();
    // Once 0.3 has shipped the burst, the time is recorded; then the next burst waits
    // past a whole second, since S3 and Azure keep LastModified in whole seconds.
    let mut probes = 0;
    let mut record = |points: &mut Vec<(SystemTime, Vec<String>)>| {
        // Shipped means Litestream 0.3.13's own latest restore has the writer's state;
        // a busy machine can take longer than any fixed pause.
        let state = user_dump(&db);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            probes += 1;
            let probe = dir.path().join(format!("probe-{probes}.db"));
            let o = run(litestream03()
                .envs(store.litestream_env.iter().map(|(k, v)| (k, v)))
                .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
                .args(["restore", "-config"])
                .arg(&config)
                .arg("-o")
                .arg(&probe)
                .arg(&db));
            let shipped = o.success() && user_dump(&probe) == state;
            let _ = std::fs::remove_file(&probe);
            if shipped {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "Litestream 0.3.13 did not ship the burst within 60 s\n{o}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        points.push((SystemTime::now(), state));
        std::thread::sleep(Duration::from_millis(1200));
    };

    let mut ls = start_litestream(&config, &store);
    std::thread::sleep(Duration::from_millis(1000));
    for _ in 0..3 {
        write_burst(&conn, &mut next, 30);
        record(&mut points);
        assert!(ls.is_running(), "litestream died\n{}", ls.output_report());
    }
    write_burst(&conn, &mut next, 10);
    std::thread::sleep(Duration::from_millis(1500));
    let st = ls.stop(SIGTERM, Duration::from_secs(20));
    assert!(
        st.success() || st.code().is_none(),
        "litestream: {st}\n{}",
        ls.output_report()
    );

    // While it is down: more commits, then a checkpoint that empties the WAL, which 0.3
    // cannot follow and answers with a new generation.
    write_burst(&conn, &mut next, 10);
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .expect("checkpoint");
    assert_eq!(busy, 0, "the TRUNCATE checkpoint was blocked");

    let mut ls = start_litestream(&config, &store);
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..2 {
        write_burst(&conn, &mut next, 30);
        record(&mut points);
        assert!(ls.is_running(), "litestream died\n{}", ls.output_report());
    }
    write_burst(&conn, &mut next, 15);
    std::thread::sleep(Duration::from_millis(2000));
    let last = user_dump(&db);
    let st = ls.stop(SIGTERM, Duration::from_secs(20));
    assert!(
        st.success() || st.code().is_none(),
        "litestream: {st}\n{}",
        ls.output_report()
    );
    drop(conn);
    (
        Produced {
            dir,
            db,
            config,
            points,
            last,
        },
        store,
    )
}

fn replica_restore(store: &Store, out: &Path, extra: &[&str]) -> support::Output {
    run(store
        .replica()
        .args(["restore", "-o"])
        .arg(out)
        .args(extra)
        .arg(&store.url))
}

fn litestream_restore(p: &Produced, store: &Store, out: &Path, extra: &[&str]) -> support::Output {
    run(litestream03()
        .envs(store.litestream_env.iter().map(|(k, v)| (k, v)))
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .args(["restore", "-config"])
        .arg(&p.config)
        .arg("-o")
        .arg(out)
        .args(extra)
        .arg(&p.db))
}

/// One generation of `replica generations --json`.
#[derive(Debug)]
struct Gen {
    id: String,
    updated: OffsetDateTime,
    snapshots: usize,
    wal_indexes: usize,
}

fn generations(store: &Store) -> Vec<Gen> {
    let out = run(store
        .replica()
        .args(["generations", "--json"])
        .arg(&store.url));
    assert!(out.success(), "replica generations failed\n{out}");
    let v: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("invalid JSON ({e})\n{out}"));
    v.as_array()
        .unwrap_or_else(|| panic!("not an array\n{out}"))
        .iter()
        .map(|g| Gen {
            id: g["generation"].as_str().expect("generation").to_owned(),
            updated: OffsetDateTime::parse(g["updated"].as_str().expect("updated"), &Rfc3339)
                .expect("updated is RFC 3339"),
            snapshots: g["snapshots"].as_array().expect("snapshots").len(),
            wal_indexes: g["wal"].as_array().expect("wal").len(),
        })
        .collect()
}

#[track_caller]
fn assert_same_db(what: &str, ours: &Path, theirs: &Path, expected: &[String]) {
    assert!(
        support::integrity_ok(ours),
        "{what}: integrity_check failed"
    );
    assert_eq!(
        user_dump(ours),
        expected,
        "{what}: replica's restore differs from the writer's state"
    );
    assert_eq!(
        user_dump(theirs),
        expected,
        "{what}: Litestream 0.3.13's restore differs from the writer's state"
    );
    let (a, b) = (
        std::fs::read(ours).expect("reading our restore"),
        std::fs::read(theirs).expect("reading Litestream's restore"),
    );
    assert!(
        a == b,
        "{what}: the two restores are not byte-identical ({} and {} bytes)",
        a.len(),
        b.len()
    );
}

/// Latest and every recorded point, by both tools; and the listing.
fn check_restores(p: &Produced, store: &Store) {
    let gens = generations(store);
    assert!(
        gens.len() >= 2,
        "the restart did not start a new generation: {gens:?}"
    );
    assert!(gens.iter().all(|g| g.snapshots >= 1), "{gens:?}");
    assert!(
        gens.iter().any(|g| g.wal_indexes >= 2),
        "no checkpoint started a new WAL index: {gens:?}"
    );

    let ours = p.dir.path().join("latest.db");
    let theirs = p.dir.path().join("latest-ls.db");
    let o = replica_restore(store, &ours, &[]);
    assert!(o.success(), "replica restore (latest) failed\n{o}");
    assert!(o.stderr.contains("Litestream 0.3 generation"), "{o}");
    let l = litestream_restore(p, store, &theirs, &[]);
    assert!(l.success(), "litestream restore (latest) failed\n{l}");
    assert_same_db("latest", &ours, &theirs, &p.last);

    for (i, (t, state)) in p.points.iter().enumerate() {
        let ts = rfc3339(*t);
        let ours = p.dir.path().join(format!("at-{i}.db"));
        let theirs = p.dir.path().join(format!("at-{i}-ls.db"));
        let o = replica_restore(store, &ours, &["--timestamp", &ts]);
        assert!(o.success(), "replica restore --timestamp {ts} failed\n{o}");
        let l = litestream_restore(p, store, &theirs, &["-timestamp", &ts]);
        assert!(
            l.success(),
            "litestream restore -timestamp {ts} failed\n{l}"
        );
        assert_same_db(&format!("point {i} ({ts})"), &ours, &theirs, state);
    }

    // An explicit generation and WAL index: the first generation up to its first index.
    let first = &gens[0];
    let ours = p.dir.path().join("gen-index.db");
    let theirs = p.dir.path().join("gen-index-ls.db");
    let o = replica_restore(store, &ours, &["--generation", &first.id, "--index", "0"]);
    assert!(
        o.success(),
        "replica restore --generation --index failed\n{o}"
    );
    let l = litestream_restore(
        p,
        store,
        &theirs,
        &["-generation", &first.id, "-index", "0"],
    );
    assert!(
        l.success(),
        "litestream restore -generation -index failed\n{l}"
    );
    assert!(support::integrity_ok(&ours));
    assert_eq!(
        user_dump(&ours),
        user_dump(&theirs),
        "--generation {} --index 0",
        first.id
    );
}

#[test]
fn file_replica_of_litestream_03_restores_at_every_point() {
    let (p, store) = produce(Store::file);
    check_restores(&p, &store);
}

#[test]
fn s3_replica_of_litestream_03_restores_at_every_point() {
    let (p, store) = produce(|_| Store::s3());
    check_restores(&p, &store);
}

#[test]
fn sftp_replica_of_litestream_03_restores_at_every_point() {
    let (p, store) = produce(|_| Store::sftp());
    check_restores(&p, &store);
}

#[test]
fn gcs_replica_of_litestream_03_restores_at_every_point() {
    let (p, store) = produce(|_| Store::gcs());
    check_restores(&p, &store);
}

#[test]
fn abs_replica_of_litestream_03_restores_at_every_point() {
    let (p, store) = produce(|_| Store::abs());
    check_restores(&p, &store);
}

/// Copies a replica directory keeping modification times (0.3's clock).
fn copy_replica(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("running cp");
    assert!(st.success(), "cp -a failed");
}

fn files_under(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("dir entry");
            let m = e.metadata().expect("metadata");
            if m.is_dir() {
                stack.push(e.path());
            } else {
                let rel = e
                    .path()
                    .strip_prefix(dir)
                    .expect("under dir")
                    .display()
                    .to_string();
                out.push((rel, m.len()));
            }
        }
    }
    out.sort();
    out
}

/// A damaged copy of the replica must fail naming `names`, leave nothing at the output
/// and nothing in its directory.
#[track_caller]
fn assert_refused(what: &str, replica: &Path, names: &str) {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out = out_dir.path().join("out.db");
    let o = run(replica_cmd()
        .args(["restore", "-o"])
        .arg(&out)
        .arg(format!("file://{}", replica.display())));
    assert_eq!(o.code(), Some(1), "{what}: expected exit code 1\n{o}");
    assert!(
        o.stderr.contains(names),
        "{what}: the error does not name {names}\n{o}"
    );
    let left: Vec<_> = std::fs::read_dir(out_dir.path())
        .expect("read_dir")
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .expect("dir entries");
    assert!(left.is_empty(), "{what}: a failed restore left {left:?}");
}

#[test]
fn damaged_03_objects_are_named_and_never_restored() {
    let (p, store) = produce(Store::file);
    let src = p.dir.path().join("replica");
    let gens = generations(&store);
    // The generation a latest restore uses: the one updated last.
    let newest = gens
        .iter()
        .max_by_key(|g| g.updated)
        .expect("a generation")
        .id
        .clone();
    let gen_dir = src.join("generations").join(&newest);
    let mut segments: Vec<String> = std::fs::read_dir(gen_dir.join("wal"))
        .expect("wal dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    segments.sort();
    assert!(segments.len() >= 3, "{segments:?}");

    // A truncated LZ4 frame: the last segment cut in half, and cut just before its end
    // mark (which a plain frame decoder takes for a complete stream).
    let last = segments.last().expect("a segment").clone();
    let len = std::fs::metadata(gen_dir.join("wal").join(&last))
        .expect("segment")
        .len();
    for (i, keep) in [len / 2, len - 4].into_iter().enumerate() {
        let copy = p.dir.path().join(format!("truncated-{i}"));
        copy_replica(&src, &copy);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(
                copy.join("generations")
                    .join(&newest)
                    .join("wal")
                    .join(&last),
            )
            .expect("opening the segment");
        f.set_len(keep).expect("truncating");
        drop(f);
        assert_refused(
            "truncated WAL segment",
            &copy,
            &format!("generations/{newest}/wal/{last}"),
        );
    }

    // A truncated snapshot.
    let copy = p.dir.path().join("truncated-snapshot");
    copy_replica(&src, &copy);
    let snap_dir = copy.join("generations").join(&newest).join("snapshots");
    let snap = std::fs::read_dir(&snap_dir)
        .expect("snapshots")
        .map(|e| e.expect("entry").path())
        .max()
        .expect("a snapshot");
    let len = std::fs::metadata(&snap).expect("snapshot").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&snap)
        .and_then(|f| f.set_len(len * 2 / 3))
        .expect("truncating the snapshot");
    let name = snap
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert_refused(
        "truncated snapshot",
        &copy,
        &format!("generations/{newest}/snapshots/{name}"),
    );

    // A missing WAL index between the snapshot and the last index.
    let first_idx = &segments[0][..8];
    let last_idx = &last[..8];
    assert_ne!(
        first_idx, last_idx,
        "the newest generation has one WAL index: {segments:?}"
    );
    let middle = segments
        .iter()
        .map(|s| s[..8].to_owned())
        .find(|i| i.as_str() > first_idx && i.as_str() < last_idx)
        .unwrap_or_else(|| first_idx.to_owned());
    let copy = p.dir.path().join("missing-index");
    copy_replica(&src, &copy);
    for s in segments.iter().filter(|s| s.starts_with(&middle)) {
        std::fs::remove_file(copy.join("generations").join(&newest).join("wal").join(s))
            .expect("removing a segment");
    }
    assert_refused(
        "missing WAL index",
        &copy,
        &format!("generations/{newest}/wal/{middle}_00000000.wal.lz4"),
    );

    // A generation without a snapshot.
    let copy = p.dir.path().join("no-snapshot");
    copy_replica(&src, &copy);
    std::fs::remove_dir_all(copy.join("generations").join(&newest).join("snapshots"))
        .expect("removing the snapshots");
    assert_refused(
        "generation without a snapshot",
        &copy,
        &format!("generations/{newest}/"),
    );

    // Asking for what is not there is the user's error (exit 2), naming what is.
    let out = p.dir.path().join("usage.db");
    let o = replica_restore(&store, &out, &["--generation", "ffffffffffffffff"]);
    assert_eq!(o.code(), Some(2), "{o}");
    assert!(
        o.stderr.contains(&newest),
        "the error does not list the generations\n{o}"
    );
    let o = replica_restore(&store, &out, &["--index", "1"]);
    assert_eq!(o.code(), Some(2), "--index without --generation\n{o}");
    assert!(!out.exists());

    // The intact replica still restores.
    let out = p.dir.path().join("intact.db");
    let o = replica_restore(&store, &out, &[]);
    assert!(o.success(), "{o}");
    assert_eq!(user_dump(&out), p.last);
}

/// `replicate` over a 0.3 replica starts LTX history beside it; retention never
/// deletes a 0.3 object; restore takes the LTX files for the latest state and the 0.3
/// generations for a time before the LTX history, and says which.
#[test]
fn ltx_history_grows_beside_03_generations() {
    let (p, store) = produce(Store::file);
    let replica_dir = p.dir.path().join("replica");
    let before = files_under(&replica_dir.join("generations"));
    assert!(!before.is_empty());

    let conn = open_wal_db(&p.db);
    let mut cmd = replica_cmd();
    cmd.arg("replicate").arg(&p.db).arg(&store.url).args([
        "--sync-interval",
        "100ms",
        "--snapshot-interval",
        "1s",
        "--levels",
        "1s,2s",
        "--l0-retention",
        "1s",
        "--retention",
        "2s",
    ]);
    let mut rep = Proc::spawn("replica replicate", cmd);
    let mut next: i64 = conn
        .query_row("SELECT max(id) + 1 FROM t", [], |r| r.get(0))
        .expect("max id");
    for _ in 0..8 {
        write_burst(&conn, &mut next, 20);
        std::thread::sleep(Duration::from_millis(700));
        assert!(rep.is_running(), "replicate died\n{}", rep.output_report());
    }
    std::thread::sleep(Duration::from_millis(3000));
    let last = user_dump(&p.db);
    let st = rep.stop(SIGINT, Duration::from_secs(30));
    assert_eq!(
        st.code(),
        Some(0),
        "replicate: {st}\n{}",
        rep.output_report()
    );
    drop(conn);

    // Retention ran (the first snapshot of the LTX history is gone) and left every 0.3
    // object as it was.
    let ltx = files_under(&replica_dir.join("ltx"));
    assert!(!ltx.is_empty(), "no LTX history was written");
    assert!(
        !ltx.iter()
            .any(|(k, _)| k == "9/0000000000000001-0000000000000001.ltx"),
        "retention did not run: the first snapshot is still there: {ltx:?}"
    );
    assert_eq!(
        files_under(&replica_dir.join("generations")),
        before,
        "0.3 objects changed"
    );

    let out = p.dir.path().join("mixed-latest.db");
    let o = replica_restore(&store, &out, &[]);
    assert!(o.success(), "{o}");
    assert!(o.stderr.contains("restoring from the LTX files"), "{o}");
    assert!(support::integrity_ok(&out));
    assert_eq!(user_dump(&out), last, "latest of the mixed path");

    let (t, state) = &p.points[1];
    let out = p.dir.path().join("mixed-old.db");
    let o = replica_restore(&store, &out, &["--timestamp", &rfc3339(*t)]);
    assert!(o.success(), "{o}");
    assert!(
        o.stderr.contains("restoring from the 0.3 generations"),
        "{o}"
    );
    assert_eq!(&user_dump(&out), state, "a 0.3-era point of the mixed path");
}
