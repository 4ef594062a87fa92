//! GCS-specific behaviour on fake-gcs-server (`REPLICA_GCS_ENDPOINT`, started by
//! `cargo xtask test`): URL forms, create-only through multipart uploads with
//! `ifGenerationMatch=0`, a create-only race, the resumable path for large overwrites,
//! the `litestream-timestamp` metadata as Litestream writes it, and error mapping.

// The key helpers take anything string-like; `&key` reads the same for both kinds.
#![allow(clippy::needless_borrows_for_generic_args)]

use replica_conformance::keys::{k, ks, p};

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use gcloud_storage::http::objects::get::GetObjectRequest;
use replica_core::client::{Payload, PutMode, PutOptions, ReplicaClient};
use replica_core::error::StoreError;
use tokio::io::AsyncReadExt;

use crate::support;

fn create_only() -> PutOptions {
    PutOptions {
        mode: PutMode::CreateOnly,
        timestamp: None,
    }
}

async fn read_all(c: &dyn ReplicaClient, key: &str) -> Vec<u8> {
    let mut out = Vec::new();
    c.get(&k(&key), None)
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"))
        .read_to_end(&mut out)
        .await
        .unwrap_or_else(|e| panic!("reading {key}: {e}"));
    out
}

/// The raw object as GCS holds it.
async fn raw_object(
    c: &backend_gcs::GcsClient,
    key: &str,
) -> gcloud_storage::http::objects::Object {
    let name = if c.prefix().is_empty() {
        key.to_owned()
    } else {
        format!("{}/{key}", c.prefix())
    };
    c.gcs_client()
        .get_object(&GetObjectRequest {
            bucket: c.bucket().to_owned(),
            object: name.clone(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("get_object {name}: {e}"))
}

#[tokio::test]
async fn url_forms_and_refusals() {
    let bucket = support::new_bucket().await;
    let ep = support::endpoint();
    // gs:// and gcs:// name the same place.
    let a = support::client_for(&format!("gs://{bucket}/same/root?endpoint={ep}")).await;
    let b = support::client_for(&format!("gcs://{bucket}/same//root/?endpoint={ep}")).await;
    assert_eq!(a.info().scheme, "gs");
    assert_eq!(
        a.info().redacted_url,
        format!("gs://{bucket}/same/root?endpoint={ep}")
    );
    a.put(
        &k("ltx/0/x.ltx"),
        Payload::Bytes(Bytes::from_static(b"hi")),
        &PutOptions::default(),
    )
    .await
    .expect("put through gs://");
    assert_eq!(read_all(&b, "ltx/0/x.ltx").await, b"hi");
    // The layout is Litestream's gs layout: <prefix>/ltx/<level>/…
    assert_eq!(
        raw_object(&a, "ltx/0/x.ltx").await.name,
        "same/root/ltx/0/x.ltx"
    );

    for (url, needle) in [
        (format!("gs://{bucket}/p?region=x"), "unknown option"),
        (
            format!("gs://{bucket}/p?endpoint={ep}&endpoint={ep}"),
            "more than once",
        ),
        (format!("gs://user:secret@{bucket}/p"), "credentials"),
        ("gs:///p".to_owned(), "bucket"),
        ("gs://UPPER/p".to_owned(), "bucket"),
        (format!("gs://{bucket}/a/../b"), "'..'"),
        (format!("gs://{bucket}/p?endpoint=ftp://h"), "endpoint"),
        (format!("gs://{bucket}/p?endpoint=http://h:1/path"), "path"),
    ] {
        match backend_gcs::GcsClient::from_url(&url).await {
            Err(StoreError::InvalidUrl { reason, url: shown }) => {
                assert!(reason.contains(needle), "{url}: {reason}");
                assert!(
                    !reason.contains("secret"),
                    "the reason leaks the password: {reason}"
                );
                let _ = shown;
            }
            other => panic!("{url}: expected InvalidUrl, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn create_only_conflict_is_already_exists() {
    let c = support::fresh().await;
    let key = "ltx/0/0000000000000001-0000000000000001.ltx";
    c.put(
        &k(&key),
        Payload::Bytes(Bytes::from_static(b"first")),
        &create_only(),
    )
    .await
    .expect("first create-only put");
    match c
        .put(
            &k(&key),
            Payload::Bytes(Bytes::from_static(b"second")),
            &create_only(),
        )
        .await
    {
        Err(StoreError::AlreadyExists { key: k }) => assert_eq!(k, key),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(read_all(&c, key).await, b"first");
    // An overwrite still replaces.
    c.put(
        &k(&key),
        Payload::Bytes(Bytes::from_static(b"third")),
        &PutOptions::default(),
    )
    .await
    .expect("overwrite");
    assert_eq!(read_all(&c, key).await, b"third");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_only_race_of_sixteen() {
    let c = Arc::new(support::fresh().await);
    for round in 0..3 {
        let key = format!("ltx/0/{round:016x}-{round:016x}.ltx");
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let mut tasks = Vec::new();
        for i in 0..16 {
            let (c, barrier, key) = (c.clone(), barrier.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                let body = format!("racer {i};").repeat(500 + i);
                barrier.wait().await;
                let res = c
                    .put(
                        &k(&key),
                        Payload::Bytes(Bytes::from(body.clone())),
                        &create_only(),
                    )
                    .await;
                (body, res)
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (body, res) = t.await.expect("racer task");
            match res {
                Ok(()) => winners.push(body),
                Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => panic!("round {round}: unexpected error {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners");
        assert_eq!(read_all(&*c, &key).await, winners[0].as_bytes());
    }
}

#[tokio::test]
async fn large_overwrite_goes_resumable() {
    let c = support::fresh().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big");
    let len = 2 * backend_gcs::CHUNK_SIZE + 777;
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &data).expect("writing the payload");
    assert!(len > backend_gcs::RESUMABLE_THRESHOLD);
    let ts = UNIX_EPOCH + Duration::from_millis(1_795_504_735_120);
    let key = "ltx/9/0000000000000001-00000000000000ff.ltx";
    c.put(
        &k(&key),
        Payload::File(path.clone()),
        &PutOptions {
            mode: PutMode::Overwrite,
            timestamp: Some(ts),
        },
    )
    .await
    .expect("large put");
    let got = read_all(&c, key).await;
    assert_eq!(got.len() as u64, len);
    assert!(got == data, "content differs");
    let info = c.head(&k(&key)).await.expect("head");
    assert_eq!((info.size, info.ltx_time), (len, Some(ts)));
    // Overwrite a large object with another large one.
    let data2: Vec<u8> = data.iter().rev().copied().collect();
    std::fs::write(&path, &data2).expect("rewriting the payload");
    c.put(&k(&key), Payload::File(path), &PutOptions::default())
        .await
        .expect("second large put");
    assert!(read_all(&c, key).await == data2, "content after overwrite");
}

#[tokio::test]
async fn timestamp_metadata_as_litestream_writes_it() {
    let c = support::fresh().await;
    let key = "ltx/0/0000000000000002-0000000000000002.ltx";
    let ts = UNIX_EPOCH + Duration::from_millis(1_795_504_735_990);
    c.put(
        &k(&key),
        Payload::Bytes(Bytes::from_static(b"x")),
        &PutOptions {
            mode: PutMode::CreateOnly,
            timestamp: Some(ts),
        },
    )
    .await
    .expect("put");
    let raw = raw_object(&c, key).await;
    assert_eq!(
        raw.metadata
            .unwrap_or_default()
            .get(backend_gcs::TIMESTAMP_METADATA)
            .map(String::as_str),
        Some("2026-11-24T07:18:55.99Z")
    );
    assert_eq!(c.head(&k(&key)).await.expect("head").ltx_time, Some(ts));
    let listed = c.list(&p("ltx/"), None).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].ltx_time,
        Some(ts),
        "list carries the metadata time"
    );
}

#[tokio::test]
async fn not_found_mapping() {
    let c = support::fresh().await;
    match c.head(&k("ltx/0/missing.ltx")).await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, "ltx/0/missing.ltx"),
        other => panic!("head: expected NotFound, got {other:?}"),
    }
    match c.get(&k("ltx/0/missing.ltx"), None).await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, "ltx/0/missing.ltx"),
        Err(e) => panic!("get: expected NotFound, got {e}"),
        Ok(_) => panic!("get of a missing key succeeded"),
    }
    match c.get(&k("ltx/0/missing.ltx"), Some(3..9)).await {
        Err(StoreError::NotFound { .. }) => {}
        Err(e) => panic!("ranged get: expected NotFound, got {e}"),
        Ok(_) => panic!("ranged get of a missing key succeeded"),
    }
    c.delete_many(&ks(&["ltx/0/missing.ltx".to_owned()]))
        .await
        .expect("deleting a missing key");
    // A missing bucket is not an empty replica: list fails, and not as NotFound.
    let gone = support::client_at(&support::random_name("no-such-bucket"), "p").await;
    match gone.list(&p(""), None).await {
        Err(StoreError::NotFound { .. }) | Ok(_) => {
            panic!("list of a missing bucket must fail, and not as NotFound")
        }
        Err(e) => assert!(!e.is_transient(), "{e}"),
    }
}
