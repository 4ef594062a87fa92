//! The S3 backend against a real S3 emulator (moto).
//!
//! `cargo xtask test` starts the emulator and sets `REPLICA_S3_ENDPOINT` (and
//! `REPLICA_S3_ACCESS_KEY_ID` / `REPLICA_S3_SECRET_ACCESS_KEY`, default `test`/`test`).
//! Without `REPLICA_S3_ENDPOINT` every test here fails: a skipped backend test looks
//! like a passing one.
//!
//! Credentials reach the SDK through an explicit credentials provider (setting process
//! environment variables from a multi-threaded test binary is unsound), except in
//! `secrets_never_appear_in_errors`, which re-runs this binary as a child process with
//! `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` set, so the standard environment chain
//! of [`S3Client::from_url`] is exercised too.
//!
//! Not covered here: `PermissionDenied`. moto accepts any credentials and has no
//! policies, so it never answers 403; the `conformance` module runs the suite's
//! `permission_denied` case against SeaweedFS, which refuses a wrong secret.

// The key helpers take anything string-like; `&key` reads the same for both kinds.
#![allow(clippy::needless_borrows_for_generic_args)]

use replica_conformance::keys::{k, ks, p};

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backend_s3::S3Client;
use bytes::Bytes;
use replica_core::client::{Payload, PutMode, PutOptions, ReplicaClient};
use replica_core::error::{Chain, StoreError};
use replica_core::layout::LayoutStyle;
use replica_core::retry::{Policy, Retrying};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{client_at, client_for, emulator, fresh, new_bucket, random_name};

const MIB: usize = 1024 * 1024;

async fn read_all(c: &S3Client, key: &str, range: Option<Range<u64>>) -> Vec<u8> {
    let mut r = c
        .get(&k(&key), range.clone())
        .await
        .unwrap_or_else(|e| panic!("get {key} {range:?}: {e}"));
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).await.expect("read body");
    buf
}

fn opts(mode: PutMode) -> PutOptions {
    PutOptions {
        mode,
        timestamp: None,
    }
}

async fn put_bytes(
    c: &dyn ReplicaClient,
    key: &str,
    data: &[u8],
    mode: PutMode,
) -> Result<(), StoreError> {
    c.put(
        &k(&key),
        Payload::Bytes(Bytes::copy_from_slice(data)),
        &opts(mode),
    )
    .await
}

/// Deterministic, incompressible-looking test data.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn ltx_key(level: u8, n: u64) -> String {
    format!("{level:04x}/{n:016x}-{n:016x}.ltx")
}

/// Multipart uploads still open under the client's prefix.
async fn open_uploads(c: &S3Client) -> usize {
    let out = c
        .sdk_client()
        .list_multipart_uploads()
        .bucket(c.bucket())
        .prefix(c.prefix())
        .send()
        .await
        .expect("list multipart uploads");
    out.uploads().len()
}

#[tokio::test]
async fn basics() {
    let c = fresh().await;
    assert_eq!(c.info().scheme, "s3");
    assert_eq!(c.info().layout, LayoutStyle::HexLevel);
    let caps = c.info().capabilities;
    assert!(caps.create_only && caps.ranged_get && !caps.list_has_ltx_time);
    let url = c.info().redacted_url.clone();
    assert_eq!(
        url,
        format!(
            "s3://{}/{}?endpoint={}&region=us-east-1",
            c.bucket(),
            c.prefix(),
            emulator().endpoint.trim_end_matches('/')
        )
    );
    assert_eq!(format!("{c:?}"), format!("S3Client {{ url: {url:?} }}"));
}

#[tokio::test]
async fn single_put_from_file() {
    let c = fresh().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("l0.ltx");
    // Exactly the threshold: still a single PutObject.
    let data = pattern(8 * MIB, 7);
    std::fs::write(&path, &data).expect("write");
    c.put(
        &k("0000/file"),
        Payload::File(path.clone()),
        &opts(PutMode::CreateOnly),
    )
    .await
    .expect("put file");
    assert!(read_all(&c, "0000/file", None).await == data);
    let etag = c
        .sdk_client()
        .head_object()
        .bucket(c.bucket())
        .key(format!("{}/0000/file", c.prefix()))
        .send()
        .await
        .expect("raw head")
        .e_tag()
        .map(str::to_owned)
        .expect("etag");
    assert!(
        !etag.contains('-'),
        "a multipart ETag {etag} for a single put"
    );
    assert!(matches!(
        c.put(
            &k("0000/file"),
            Payload::File(path),
            &opts(PutMode::CreateOnly)
        )
        .await,
        Err(StoreError::AlreadyExists { .. })
    ));
}

#[tokio::test]
async fn round_trip_with_timestamp_metadata() {
    let c = fresh().await;
    let key = ltx_key(0, 1);
    // 2026-11-24T07:18:55.993Z, plus sub-millisecond noise that must be dropped.
    let ts = UNIX_EPOCH + Duration::from_millis(1_795_504_735_993) + Duration::from_micros(400);
    let data = pattern(4321, 1);
    let before = SystemTime::now();
    c.put(
        &k(&key),
        Payload::Bytes(Bytes::from(data.clone())),
        &PutOptions {
            mode: PutMode::Overwrite,
            timestamp: Some(ts),
        },
    )
    .await
    .expect("put");
    assert_eq!(read_all(&c, &key, None).await, data);

    let info = c.head(&k(&key)).await.expect("head");
    assert_eq!(info.key, key);
    assert_eq!(info.size, 4321);
    assert_eq!(
        info.ltx_time,
        Some(UNIX_EPOCH + Duration::from_millis(1_795_504_735_993))
    );

    // On the wire exactly as Litestream writes it.
    let raw = c
        .sdk_client()
        .head_object()
        .bucket(c.bucket())
        .key(format!("{}/{key}", c.prefix()))
        .send()
        .await
        .expect("raw head");
    let meta = raw.metadata().expect("metadata");
    assert_eq!(
        meta.get("litestream-timestamp").map(String::as_str),
        Some("2026-11-24T07:18:55.993Z")
    );

    // LIST reports LastModified (the upload time) as such, and no LTX time: it is only
    // in the metadata.
    let listed = c.list(&p(""), None).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, key);
    assert_eq!(listed[0].size, 4321);
    assert_eq!(listed[0].ltx_time, None, "S3 listings carry no LTX time");
    let lm = listed[0].last_modified.expect("LastModified");
    assert!(
        lm + Duration::from_secs(5) >= before,
        "LastModified {lm:?} before the upload at {before:?}"
    );

    // Without a timestamp, head reports no LTX time, and LastModified as such.
    c.put(
        &k("0000/plain"),
        Payload::Bytes(Bytes::from_static(b"x")),
        &PutOptions::default(),
    )
    .await
    .expect("put plain");
    let plain = c.head(&k("0000/plain")).await.expect("head plain");
    assert_eq!(plain.ltx_time, None);
    let created = plain.last_modified.expect("LastModified");
    assert!(created + Duration::from_secs(5) >= before);

    // Timestamps written by other tools, with other precisions, parse too.
    for (value, ms) in [
        ("2026-11-24T07:18:55.99Z", 1_795_504_735_990u64),
        ("2026-11-24T07:18:55Z", 1_795_504_735_000),
        ("2026-11-24T07:18:55.993000000Z", 1_795_504_735_993),
    ] {
        c.sdk_client()
            .put_object()
            .bucket(c.bucket())
            .key(format!("{}/0001/foreign", c.prefix()))
            .metadata("litestream-timestamp", value)
            .body(Bytes::from_static(b"abc").into())
            .send()
            .await
            .expect("raw put");
        let info = c.head(&k("0001/foreign")).await.expect("head foreign");
        assert_eq!(
            info.ltx_time,
            Some(UNIX_EPOCH + Duration::from_millis(ms)),
            "{value}"
        );
    }
}

#[tokio::test]
async fn empty_object_and_overwrite() {
    let c = fresh().await;
    put_bytes(&c, "0000/k", b"", PutMode::Overwrite)
        .await
        .expect("put empty");
    assert_eq!(c.head(&k("0000/k")).await.expect("head").size, 0);
    assert!(read_all(&c, "0000/k", None).await.is_empty());
    put_bytes(&c, "0000/k", b"second", PutMode::Overwrite)
        .await
        .expect("overwrite");
    assert_eq!(read_all(&c, "0000/k", None).await, b"second");
}

#[tokio::test]
async fn ranged_get() {
    let c = fresh().await;
    let data = pattern(10_000, 2);
    put_bytes(&c, "0009/snap", &data, PutMode::Overwrite)
        .await
        .expect("put");
    for r in [
        0..1,
        0..100,
        100..200,
        9_999..10_000,
        0..10_000,
        5_000..5_001,
    ] {
        let got = read_all(&c, "0009/snap", Some(r.clone())).await;
        assert_eq!(got, &data[r.start as usize..r.end as usize], "{r:?}");
    }
    // Past the end: what exists, or nothing.
    assert_eq!(
        read_all(&c, "0009/snap", Some(9_990..20_000)).await,
        &data[9_990..]
    );
    assert!(
        read_all(&c, "0009/snap", Some(10_000..10_010))
            .await
            .is_empty()
    );
    assert!(
        read_all(&c, "0009/snap", Some(20_000..30_000))
            .await
            .is_empty()
    );
    // Empty range.
    assert!(read_all(&c, "0009/snap", Some(7..7)).await.is_empty());
    // Inverted range is an error, not a panic.
    assert!(matches!(
        c.get(&k("0009/snap"), Some(std::ops::Range { start: 9, end: 3 }))
            .await,
        Err(StoreError::Other { .. })
    ));
    // A missing object is NotFound with or without a range.
    for r in [None, Some(0..10), Some(3..3)] {
        match c.get(&k("0009/missing"), r.clone()).await {
            Err(e) => assert!(e.is_not_found(), "{r:?}: {e}"),
            Ok(_) => panic!("{r:?}: got a missing object"),
        }
    }
}

/// Puts `n` small objects with bounded concurrency.
async fn put_many(c: &S3Client, keys: &[String]) {
    let c = Arc::new(c.clone());
    let mut set = tokio::task::JoinSet::new();
    for chunk in keys.chunks(keys.len().div_ceil(32).max(1)) {
        let c = c.clone();
        let chunk = chunk.to_vec();
        set.spawn(async move {
            for k in chunk {
                put_bytes(c.as_ref(), &k, k.as_bytes(), PutMode::Overwrite)
                    .await
                    .unwrap_or_else(|e| panic!("put {k}: {e}"));
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("put task");
    }
}

#[tokio::test]
async fn list_pages_past_1000_and_start_after_and_delete_many() {
    let emu = emulator();
    let bucket = new_bucket().await;
    let c = client_at(&emu.endpoint, &bucket, "db").await;
    // Neighbours that share the prefix as a string but not as a directory must stay
    // invisible.
    let sibling = client_at(&emu.endpoint, &bucket, "db2").await;
    put_bytes(&sibling, "0000/x", b"x", PutMode::Overwrite)
        .await
        .expect("sibling");
    let root = client_at(&emu.endpoint, &bucket, "").await;
    put_bytes(&root, "dbfile", b"x", PutMode::Overwrite)
        .await
        .expect("root object");

    let mut keys: Vec<String> = (1..=1100).map(|n| ltx_key(0, n)).collect();
    keys.extend((1..=150).map(|n| ltx_key(1, n)));
    put_many(&c, &keys).await;
    keys.sort();

    let all = c.list(&p(""), None).await.expect("list all");
    let got: Vec<&str> = all.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(got, keys.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(all.iter().all(|o| o.size == o.key.len() as u64));

    let level0 = c.list(&p("0000/"), None).await.expect("list level 0");
    assert_eq!(level0.len(), 1100);
    assert!(level0.iter().all(|o| o.key.starts_with("0000/")));

    // start_after in the middle of the second page, and past everything.
    let after = ltx_key(0, 1050);
    let tail = c.list(&p("0000/"), Some(&after)).await.expect("list tail");
    assert_eq!(tail.len(), 50);
    assert_eq!(tail[0].key, ltx_key(0, 1051));
    let tail = c
        .list(&p(""), Some(&ltx_key(0, 10)))
        .await
        .expect("list tail");
    assert_eq!(tail.len(), 1100 - 10 + 150);
    assert!(
        c.list(&p(""), Some("zzzz"))
            .await
            .expect("past end")
            .is_empty()
    );
    // start_after before the prefix.
    assert_eq!(
        c.list(&p("0001/"), Some("0000/"))
            .await
            .expect("level 1")
            .len(),
        150
    );
    assert!(
        c.list(&p("0002/"), None)
            .await
            .expect("empty level")
            .is_empty()
    );

    // The bucket root: keys relative to an empty prefix.
    let root_keys: Vec<String> = root
        .list(&p("db"), None)
        .await
        .expect("root list")
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(root_keys.len(), 1250 + 2);
    assert!(root_keys.contains(&"dbfile".to_owned()));
    assert!(root_keys.contains(&"db2/0000/x".to_owned()));
    assert!(root_keys.contains(&format!("db/{}", ltx_key(1, 150))));

    // Delete everything plus keys that never existed, in more than one batch.
    let mut doomed = keys.clone();
    doomed.extend((5000..5010).map(|n| ltx_key(0, n)));
    doomed.push("0009/never-existed".into());
    c.delete_many(&ks(&doomed)).await.expect("delete_many");
    assert!(c.list(&p(""), None).await.expect("list after").is_empty());
    // Deleting again (all missing) is fine, as is deleting nothing.
    c.delete_many(&ks(&doomed[..1200]))
        .await
        .expect("delete again");
    c.delete_many(&[]).await.expect("delete nothing");
    // The neighbours survived.
    assert_eq!(sibling.list(&p(""), None).await.expect("sibling").len(), 1);
    assert!(root.head(&k("dbfile")).await.is_ok());
}

#[tokio::test]
async fn create_only_conflict() {
    let c = fresh().await;
    let key = ltx_key(0, 7);
    put_bytes(&c, &key, b"first", PutMode::CreateOnly)
        .await
        .expect("first create");
    match put_bytes(&c, &key, b"second", PutMode::CreateOnly).await {
        Err(StoreError::AlreadyExists { key: k }) => assert_eq!(k, key),
        other => panic!("second create-only put: {other:?}"),
    }
    assert_eq!(read_all(&c, &key, None).await, b"first");
    // An object written by someone else (no put token) also conflicts.
    put_bytes(&c, "0000/other", b"theirs", PutMode::Overwrite)
        .await
        .expect("overwrite put");
    assert!(matches!(
        put_bytes(&c, "0000/other", b"mine", PutMode::CreateOnly).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    // Overwrite still replaces.
    put_bytes(&c, &key, b"third", PutMode::Overwrite)
        .await
        .expect("overwrite");
    assert_eq!(read_all(&c, &key, None).await, b"third");
}

#[tokio::test]
async fn create_only_race_has_exactly_one_winner() {
    let c = Arc::new(fresh().await);
    let key = ltx_key(0, 99);
    let start = Arc::new(tokio::sync::Barrier::new(16));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..16u8 {
        let (c, key, start) = (c.clone(), key.clone(), start.clone());
        set.spawn(async move {
            let body = vec![i; 1000 + usize::from(i)];
            start.wait().await;
            (
                i,
                put_bytes(c.as_ref(), &key, &body, PutMode::CreateOnly).await,
            )
        });
    }
    let mut winners = Vec::new();
    while let Some(r) = set.join_next().await {
        match r.expect("task") {
            (i, Ok(())) => winners.push(i),
            (_, Err(StoreError::AlreadyExists { .. })) => {}
            (i, Err(e)) => panic!("racer {i}: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let w = winners[0];
    assert_eq!(
        read_all(&c, &key, None).await,
        vec![w; 1000 + usize::from(w)]
    );
}

#[tokio::test]
async fn multipart_file_payload_and_create_only() {
    let c = fresh().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("snapshot.ltx");
    let data = pattern(20 * MIB + 12_345, 3);
    std::fs::write(&path, &data).expect("write spool file");
    let key = ltx_key(9, 1);
    let ts = UNIX_EPOCH + Duration::from_millis(1_795_504_735_120);
    let create = PutOptions {
        mode: PutMode::CreateOnly,
        timestamp: Some(ts),
    };
    c.put(&k(&key), Payload::File(path.clone()), &create)
        .await
        .expect("multipart put");
    let info = c.head(&k(&key)).await.expect("head");
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(info.ltx_time, Some(ts));
    let got = read_all(&c, &key, None).await;
    assert!(got == data, "multipart content differs");
    // A range across the 8 MiB part boundary.
    let r = (8 * MIB - 100) as u64..(8 * MIB + 100) as u64;
    assert_eq!(
        read_all(&c, &key, Some(r.clone())).await,
        &data[r.start as usize..r.end as usize]
    );

    // Create-only on multipart: the second upload is refused at completion, the object
    // is untouched and the refused upload is aborted.
    let other = dir.path().join("other.ltx");
    std::fs::write(&other, pattern(9 * MIB, 4)).expect("write other");
    match c.put(&k(&key), Payload::File(other), &create).await {
        Err(StoreError::AlreadyExists { .. }) => {}
        r => panic!("second create-only multipart put: {r:?}"),
    }
    assert!(read_all(&c, &key, None).await == data);
    assert_eq!(open_uploads(&c).await, 0);

    // Multipart from bytes, overwrite.
    let bytes = pattern(9 * MIB + 1, 5);
    c.put(
        &k(&key),
        Payload::Bytes(Bytes::from(bytes.clone())),
        &PutOptions::default(),
    )
    .await
    .expect("multipart bytes overwrite");
    assert!(read_all(&c, &key, None).await == bytes);

    // A missing spool file is an error about the file, not a missing object.
    match c
        .put(
            &k("0009/x"),
            Payload::File(dir.path().join("nope")),
            &PutOptions::default(),
        )
        .await
    {
        Err(e @ StoreError::Other { .. }) => {
            let text = Chain(&e).to_string();
            assert!(text.contains("payload file"), "{text}")
        }
        r => panic!("missing spool file: {r:?}"),
    }
    assert_eq!(open_uploads(&c).await, 0);
}

#[tokio::test]
async fn not_found_mapping() {
    let c = fresh().await;
    assert!(
        c.head(&k("0000/missing"))
            .await
            .expect_err("head")
            .is_not_found()
    );
    let get = c.get(&k("0000/missing"), None).await.err().expect("get");
    assert!(get.is_not_found(), "{get}");
    assert!(get.to_string().contains("0000/missing"), "{get}");

    let emu = emulator();
    let gone = client_at(&emu.endpoint, &random_name("no-such-bucket"), "p").await;
    let get = gone.get(&k("0000/x"), None).await.err().expect("get");
    assert!(get.is_not_found(), "{get}");
    assert!(get.to_string().contains("does not exist"), "{get}");
    let list = gone.list(&p(""), None).await.expect_err("list");
    assert!(list.is_not_found(), "{list}");
    assert!(list.to_string().contains("does not exist"), "{list}");
    let put = put_bytes(&gone, "0000/x", b"x", PutMode::Overwrite)
        .await
        .expect_err("put");
    assert!(put.is_not_found(), "{put}");
    assert!(put.to_string().contains("does not exist"), "{put}");
    // HEAD responses have no body, so a missing bucket looks like a missing key there.
    assert!(
        gone.head(&k("0000/x"))
            .await
            .expect_err("head")
            .is_not_found()
    );
}

#[tokio::test]
async fn options_reach_the_store() {
    let emu = emulator();
    let bucket = new_bucket().await;
    let c = client_for(&format!(
        "s3://{bucket}/p?endpoint={}&region=us-east-1&sse=AES256&storage_class=STANDARD_IA",
        emu.endpoint
    ))
    .await;
    put_bytes(&c, "0000/k", b"data", PutMode::CreateOnly)
        .await
        .expect("put");
    let raw = c
        .sdk_client()
        .head_object()
        .bucket(&bucket)
        .key("p/0000/k")
        .send()
        .await
        .expect("raw head");
    assert_eq!(
        raw.server_side_encryption().map(|s| s.as_str()),
        Some("AES256")
    );
    assert_eq!(raw.storage_class().map(|s| s.as_str()), Some("STANDARD_IA"));
}

/// A TCP proxy in front of the emulator that, once armed, swallows the response to the
/// next request carrying `If-None-Match` (after the emulator has applied it) and closes
/// the connection: a lost response.
struct LossyProxy {
    endpoint: String,
    armed: Arc<AtomicBool>,
    dropped: Arc<AtomicUsize>,
}

async fn lossy_proxy(upstream: &str) -> LossyProxy {
    let upstream = upstream
        .strip_prefix("http://")
        .expect("the proxy handles http endpoints")
        .trim_end_matches('/')
        .to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let armed = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicUsize::new(0));
    let (armed2, dropped2) = (armed.clone(), dropped.clone());
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let (armed, dropped) = (armed2.clone(), dropped2.clone());
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let conditional = Arc::new(AtomicBool::new(false));
                let cond = conditional.clone();
                let up = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let chunk = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                        if chunk.contains("if-none-match:") {
                            cond.store(true, Ordering::SeqCst);
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if conditional.swap(false, Ordering::SeqCst)
                        && armed.swap(false, Ordering::SeqCst)
                    {
                        dropped.fetch_add(1, Ordering::SeqCst);
                        break; // swallow the response and hang up
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    LossyProxy {
        endpoint,
        armed,
        dropped,
    }
}

/// A create-only put whose response is lost: the retry policy resends it, S3 refuses
/// the resend (the first attempt landed), and the object there is ours, which is what
/// the caller (`Replica::upload`) confirms by content before it counts the put done.
/// Nothing is reported as written that was not, and no multipart upload is left open.
#[tokio::test]
async fn create_only_after_a_lost_response_is_refused_and_the_object_is_ours() {
    let emu = emulator();
    let bucket = new_bucket().await;
    let proxy = lossy_proxy(&emu.endpoint).await;
    let raw = client_at(&proxy.endpoint, &bucket, "p").await;
    let c = Retrying::new(Arc::new(raw.clone()), Policy::REQUEST);

    // Single-part.
    proxy.armed.store(true, Ordering::SeqCst);
    let res = put_bytes(&c, "0000/single", b"mine", PutMode::CreateOnly).await;
    assert!(
        matches!(res, Err(StoreError::AlreadyExists { .. })),
        "{res:?}"
    );
    assert_eq!(
        proxy.dropped.load(Ordering::SeqCst),
        1,
        "no response was lost"
    );
    assert_eq!(read_all(&raw, "0000/single", None).await, b"mine");

    // Multipart: the lost response is CompleteMultipartUpload's.
    let data = pattern(9 * MIB, 6);
    proxy.armed.store(true, Ordering::SeqCst);
    let res = c
        .put(
            &k("0009/multi"),
            Payload::Bytes(Bytes::from(data.clone())),
            &opts(PutMode::CreateOnly),
        )
        .await;
    assert!(
        matches!(res, Err(StoreError::AlreadyExists { .. })),
        "{res:?}"
    );
    assert_eq!(
        proxy.dropped.load(Ordering::SeqCst),
        2,
        "no response was lost"
    );
    assert!(read_all(&raw, "0009/multi", None).await == data);
    assert_eq!(open_uploads(&raw).await, 0);
}

/// Errors never carry the secret key, in Display or Debug. Runs
/// `secret_leak_child` in a child process whose environment holds the credentials, so
/// the standard AWS environment chain of `S3Client::from_url` is used.
#[test]
fn secrets_never_appear_in_errors() {
    let emu = emulator();
    let marker = format!("SECRETMARKER{:016x}", rand::random::<u64>());
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "s3::secret_leak_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("AWS_ACCESS_KEY_ID", &emu.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &marker)
        .env("REPLICA_TEST_SECRET_MARKER", &marker)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .output()
        .expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("checked error"),
        "child checked nothing:\n{stdout}"
    );
}

#[tokio::test]
#[ignore = "run by secrets_never_appear_in_errors in a child process"]
async fn secret_leak_child() {
    let Ok(marker) = std::env::var("REPLICA_TEST_SECRET_MARKER") else {
        println!("nothing to do: secrets_never_appear_in_errors runs this with a marker");
        return;
    };
    let emu = emulator();
    let check = |what: &str, e: &StoreError| {
        let shown = Chain(e).to_string();
        let debug = format!("{e:?}");
        let alternate = format!("{e:#?}");
        println!("checked error ({what}): {shown}");
        for text in [&shown, &debug, &alternate] {
            assert!(!text.contains(&marker), "{what}: secret in {text}");
        }
    };

    // A closed port: connection refused, after the SDK's retries.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let c = S3Client::from_url(&format!(
        "s3://bucket/p?endpoint=http://127.0.0.1:{closed}&region=us-east-1"
    ))
    .await
    .expect("client");
    assert!(!format!("{c:?}").contains(&marker));
    let e = put_bytes(&c, "0000/x", b"x", PutMode::CreateOnly)
        .await
        .expect_err("put to a closed port");
    assert!(e.is_transient(), "{e:?}");
    check("put, closed port", &e);
    check(
        "list, closed port",
        &c.list(&p(""), None).await.expect_err("list"),
    );

    // A missing bucket on the emulator, signed with the marker secret.
    let c = S3Client::from_url(&format!(
        "s3://{}/p?endpoint={}",
        random_name("missing-bucket"),
        emu.endpoint
    ))
    .await
    .expect("client");
    for (what, e) in [
        (
            "put, missing bucket",
            put_bytes(&c, "0000/x", b"x", PutMode::Overwrite)
                .await
                .expect_err("put"),
        ),
        (
            "get, missing bucket",
            c.get(&k("0000/x"), Some(0..4)).await.err().expect("get"),
        ),
        (
            "head, missing bucket",
            c.head(&k("0000/x")).await.expect_err("head"),
        ),
        (
            "list, missing bucket",
            c.list(&p(""), None).await.expect_err("list"),
        ),
        (
            "delete, missing bucket",
            c.delete_many(&ks(&["0000/x".to_owned()]))
                .await
                .expect_err("delete"),
        ),
    ] {
        assert!(e.is_not_found(), "{what}: {e:?}");
        check(what, &e);
    }

    // Credentials in the URL are refused without echoing them.
    let e = S3Client::from_url(&format!("s3://AKID:{marker}@bucket/p"))
        .await
        .expect_err("credentials in URL");
    assert!(matches!(e, StoreError::InvalidUrl { .. }));
    check("credentials in URL", &e);
}
