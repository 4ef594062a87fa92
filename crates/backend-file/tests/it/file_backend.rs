//! File-specific tests: URL parsing, key validation, temp-file hygiene, mtimes, the
//! on-disk layout. The behaviour every backend shares (round trips, listing and paging,
//! ranges, large objects, create-only, not-found) is checked by the conformance suite in
//! the `conformance` module.

// The key helpers take anything string-like; `&key` reads the same for both kinds.
#![allow(clippy::needless_borrows_for_generic_args)]

use replica_conformance::keys::{k, ks, p};

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use backend_file::FileClient;
use bytes::Bytes;
use replica_core::client::{Payload, PutMode, PutOptions, ReplicaClient};
use replica_core::error::{Chain, StoreError};
use tokio::io::AsyncReadExt;
use url::Url;

fn client(dir: &tempfile::TempDir) -> FileClient {
    FileClient::new(dir.path().join("replica"))
}

fn bytes(s: &str) -> Payload {
    Payload::Bytes(Bytes::copy_from_slice(s.as_bytes()))
}

fn create_only() -> PutOptions {
    PutOptions {
        mode: PutMode::CreateOnly,
        timestamp: None,
    }
}

async fn read_all(c: &FileClient, key: &str, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let mut out = Vec::new();
    c.get(&k(&key), range)
        .await
        .expect("get")
        .read_to_end(&mut out)
        .await
        .expect("read");
    out
}

async fn keys(c: &FileClient, prefix: &str, after: Option<&str>) -> Vec<String> {
    c.list(&p(prefix), after)
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect()
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn ranged_get_reads_half_open_ranges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(&dir);
    c.put(&k("k"), bytes("0123456789"), &PutOptions::default())
        .await
        .expect("put");
    assert_eq!(read_all(&c, "k", Some(2..5)).await, b"234");
    assert_eq!(read_all(&c, "k", Some(0..10)).await, b"0123456789");
    assert_eq!(read_all(&c, "k", Some(4..4)).await, b"");
    // Past the end: what exists, not an error.
    assert_eq!(read_all(&c, "k", Some(8..100)).await, b"89");
    assert_eq!(read_all(&c, "k", Some(50..60)).await, b"");
    #[allow(clippy::reversed_empty_ranges)]
    let backwards = 5..2;
    let err = c
        .get(&k("k"), Some(backwards))
        .await
        .err()
        .expect("bad range");
    assert!(matches!(err, StoreError::Other { .. }), "{err}");
}

#[test]
fn kind_and_capabilities() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(&dir);
    assert_eq!(c.info().scheme, "file");
    let caps = c.info().capabilities;
    assert!(caps.create_only && caps.ranged_get && caps.list_has_ltx_time);
}

#[tokio::test]
async fn missing_root_lists_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = FileClient::new(dir.path().join("does/not/exist"));
    assert!(keys(&c, "", None).await.is_empty());
    assert!(keys(&c, "ltx/0/", None).await.is_empty());
}

#[tokio::test]
async fn temp_files_are_not_listed_or_left_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(&dir);
    let key = "ltx/0/0000000000000001-0000000000000001.ltx";
    c.put(&k(&key), bytes("a"), &PutOptions::default())
        .await
        .expect("put");
    c.put(&k(&key), bytes("b"), &PutOptions::default())
        .await
        .expect("overwrite");
    c.put(&k("ltx/0/x"), bytes("c"), &create_only())
        .await
        .expect("create-only");
    c.put(&k("ltx/0/x"), bytes("d"), &create_only())
        .await
        .expect_err("exists");
    let level_dir = c.root().join("ltx/0");
    assert_eq!(
        dir_names(&level_dir),
        ["0000000000000001-0000000000000001.ltx", "x"],
        "no temp files survive a put, successful or not"
    );

    // A crashed writer's leftovers, and a hidden directory.
    std::fs::write(
        level_dir.join(".0000000000000002-0000000000000002.ltx.0123456789abcdef.tmp"),
        b"partial",
    )
    .expect("write");
    std::fs::create_dir(c.root().join(".hidden")).expect("mkdir");
    std::fs::write(c.root().join(".hidden/y"), b"y").expect("write");
    assert_eq!(keys(&c, "", None).await, [key, "ltx/0/x"]);
    assert_eq!(keys(&c, "ltx/0/", None).await, [key, "ltx/0/x"]);
}

#[tokio::test]
async fn timestamp_round_trips_through_mtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(&dir);
    let ts = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    let opts = PutOptions {
        mode: PutMode::Overwrite,
        timestamp: Some(ts),
    };
    c.put(&k("a"), bytes("x"), &opts).await.expect("put");
    let from_file = Payload::File(write_temp(&dir, "src", b"yy"));
    c.put(
        &k("b"),
        from_file,
        &PutOptions {
            mode: PutMode::CreateOnly,
            timestamp: Some(ts),
        },
    )
    .await
    .expect("put");

    for key in ["a", "b"] {
        assert_eq!(
            c.head(&k(&key)).await.expect("head").ltx_time,
            Some(ts),
            "{key}"
        );
    }
    for info in c.list(&p(""), None).await.expect("list") {
        assert_eq!(info.ltx_time, Some(ts), "{}", info.key);
    }
    // Readable the way Litestream reads it: plain file mtime.
    let mtime = std::fs::metadata(c.root().join("a"))
        .expect("stat")
        .modified()
        .expect("mtime");
    assert_eq!(mtime, ts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn create_only_race_has_exactly_one_winner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Arc::new(client(&dir));
    let key = "ltx/9/0000000000000001-0000000000000001.ltx";
    let racers = 16;
    let barrier = Arc::new(tokio::sync::Barrier::new(racers));
    let mut tasks = Vec::new();
    for i in 0..racers {
        let (c, barrier) = (c.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let body = format!("body from racer {i}").repeat(1000);
            barrier.wait().await;
            let res = c.put(&k(&key), bytes(&body), &create_only()).await;
            (body, res)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (body, res) = t.await.expect("join");
        match res {
            Ok(()) => winners.push(body),
            Err(StoreError::AlreadyExists { key: k }) => assert_eq!(k, key),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(winners.len(), 1);
    assert_eq!(read_all(&c, key, None).await, winners[0].as_bytes());
    assert_eq!(
        dir_names(&c.root().join("ltx/9")),
        ["0000000000000001-0000000000000001.ltx"]
    );
}

#[tokio::test]
async fn delete_many_ignores_missing_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(&dir);
    for name in ["a/1", "a/2", "b/3"] {
        c.put(&k(name), bytes(name), &PutOptions::default())
            .await
            .expect("put");
    }
    c.delete_many(&ks(&[
        "a/1",
        "a/missing",
        "nodir/missing",
        "b/3",
        "a/2/under-a-file",
    ]))
    .await
    .expect("delete");
    assert_eq!(keys(&c, "", None).await, ["a/2"]);
    // "a" names a prefix (a directory here), not an object.
    c.delete_many(&ks(&["a"]))
        .await
        .expect("delete of a prefix");
    assert_eq!(keys(&c, "", None).await, ["a/2"]);
    c.delete_many(&[]).await.expect("empty delete");

    // An empty root is fine too.
    let empty = FileClient::new(dir.path().join("nothing"));
    empty
        .delete_many(&ks(&["x"]))
        .await
        .expect("delete in missing root");
}

#[tokio::test]
async fn file_in_the_path_is_a_permanent_error_naming_the_key() {
    // We run as root, so a read-only directory would not stop us; a regular file where
    // a directory should be fails for everyone.
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(&dir);
    c.put(&k("ltx"), bytes("not a directory"), &PutOptions::default())
        .await
        .expect("put");
    let key = "ltx/0/0000000000000001-0000000000000001.ltx";

    let err = c
        .put(&k(&key), bytes("x"), &PutOptions::default())
        .await
        .expect_err("put below a file");
    assert!(!err.is_not_found() && !err.is_transient(), "{err:?}");
    assert!(matches!(err, StoreError::Other { .. }), "{err:?}");
    assert!(err.to_string().contains(key), "{err}");

    let err = c
        .put(&k("ltx/x"), bytes("x"), &create_only())
        .await
        .expect_err("create-only below a file");
    assert!(matches!(err, StoreError::Other { .. }), "{err:?}");
    assert!(err.to_string().contains("ltx/x"), "{err}");

    let err = c.get(&k(&key), None).await.err().expect("get below a file");
    assert!(matches!(err, StoreError::Other { .. }), "{err:?}");
    assert!(err.to_string().contains(key), "{err}");

    // Listing below it: nothing can live there.
    assert!(keys(&c, "ltx/0/", None).await.is_empty());
    assert_eq!(keys(&c, "", None).await, ["ltx"]);
}

#[tokio::test]
async fn missing_payload_file_is_not_reported_as_missing_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(&dir);
    let src = dir.path().join("no-such-spool");
    let err = c
        .put(&k("k"), Payload::File(src.clone()), &PutOptions::default())
        .await
        .expect_err("missing source");
    assert!(matches!(err, StoreError::Other { .. }), "{err:?}");
    let msg = Chain(&err).to_string();
    assert!(msg.contains("no-such-spool") && msg.contains('k'), "{msg}");
    assert!(dir_names(c.root()).is_empty(), "temp file removed");
}

#[tokio::test]
async fn keys_with_spaces_and_unicode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(&dir);
    let names = [
        "dir with space/file name.ltx",
        "ünïcödé/日本語",
        "emoji/🦀 crab",
    ];
    for name in names {
        c.put(&k(name), bytes(name), &PutOptions::default())
            .await
            .expect("put");
        assert_eq!(read_all(&c, name, None).await, name.as_bytes());
        assert_eq!(
            c.head(&k(name)).await.expect("head").size,
            name.len() as u64
        );
    }
    let mut sorted: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    sorted.sort();
    assert_eq!(keys(&c, "", None).await, sorted);
    assert_eq!(keys(&c, "ünï", None).await, ["ünïcödé/日本語"]);
    assert!(c.root().join("ünïcödé/日本語").is_file());
}

/// Keys are validated once, by the type: what the file backend would have to refuse
/// (paths escaping the root, hidden temp-file names) cannot even be named.
#[test]
fn keys_that_could_escape_the_root_cannot_be_built() {
    for key in [
        "",
        "/abs",
        "a/../b",
        "..",
        "./a",
        "a/.",
        "a//b",
        "a/",
        "a\\b",
        "a\0b",
        ".hidden",
        "ltx/.x.tmp",
    ] {
        match replica_core::key::Key::new(key) {
            Err(StoreError::InvalidKey { key: named, .. }) => assert_eq!(named, key),
            other => panic!("{key:?}: {other:?}"),
        }
    }
    for prefix in ["/", "../", "a/../", "a//", ".x", "a/.tmp", "a\\"] {
        assert!(
            replica_core::key::KeyPrefix::new(prefix).is_err(),
            "{prefix:?}"
        );
    }
}

#[test]
fn urls_are_parsed_strictly() {
    let ok = FileClient::parse("file:///var/lib/replica").expect("absolute");
    assert_eq!(ok.root(), Path::new("/var/lib/replica"));
    assert_eq!(ok.info().redacted_url, "file:///var/lib/replica");

    let spaced = FileClient::from_url(&Url::parse("file:///tmp/with%20space").expect("url"))
        .expect("percent-encoded");
    assert_eq!(spaced.root(), Path::new("/tmp/with space"));
    let local = FileClient::parse("file://localhost/srv/db").expect("localhost");
    assert_eq!(local.root(), Path::new("/srv/db"));
    let new = FileClient::new("/a b/c".into());
    assert_eq!(new.info().redacted_url, "file:///a%20b/c");

    for (url, needle) in [
        ("s3://bucket/db", "file://"),
        ("file://host/db", "host"),
        ("file://./relative", "host"),
        ("file:relative/db", "relative"),
        ("file:./db", "relative"),
        ("file:", "no directory"),
        ("file://", "no directory"),
        ("file:///db?sync=always", "query"),
        ("file:///db#frag", "fragment"),
        ("file:///db%00x", "NUL"),
        ("not a url", "not a url"),
    ] {
        let err = FileClient::parse(url).expect_err(url);
        let msg = err.to_string();
        assert!(matches!(err, StoreError::InvalidUrl { .. }), "{url}: {msg}");
        assert!(msg.contains(needle), "{url}: {msg}");
    }
    let err = FileClient::from_url(&Url::parse("https://example.com/x").expect("url"))
        .expect_err("scheme");
    assert!(err.to_string().contains("https://example.com/x"), "{err}");
}

fn write_temp(dir: &tempfile::TempDir, name: &str, data: &[u8]) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, data).expect("write");
    p
}
