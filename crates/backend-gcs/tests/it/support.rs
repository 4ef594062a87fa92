//! Shared by the GCS test modules: the emulator's endpoint, buckets and clients on it.

use backend_gcs::GcsClient;
use gcloud_storage::http::buckets::insert::{
    BucketCreationConfig, InsertBucketParam, InsertBucketRequest,
};

pub fn endpoint() -> String {
    match std::env::var("REPLICA_GCS_ENDPOINT") {
        Ok(e) if !e.is_empty() => e,
        _ => panic!(
            "REPLICA_GCS_ENDPOINT is not set: run `cargo xtask test` (it starts \
             fake-gcs-server), or start one yourself and set \
             REPLICA_GCS_ENDPOINT=http://host:port"
        ),
    }
}

pub fn random_name(what: &str) -> String {
    format!("{what}-{:016x}", rand::random::<u64>())
}

pub async fn client_for(url: &str) -> GcsClient {
    GcsClient::from_url(url)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// A client at `prefix` (may be empty) of `bucket` on the emulator.
pub async fn client_at(bucket: &str, prefix: &str) -> GcsClient {
    client_for(&format!("gs://{bucket}/{prefix}?endpoint={}", endpoint())).await
}

/// Creates a bucket with a random name and returns the name.
pub async fn new_bucket() -> String {
    let bucket = random_name("replica-test");
    let c = client_at(&bucket, "").await;
    c.gcs_client()
        .insert_bucket(&InsertBucketRequest {
            name: bucket.clone(),
            param: InsertBucketParam {
                project: "test".into(),
                ..Default::default()
            },
            bucket: BucketCreationConfig::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("creating bucket {bucket}: {e}"));
    bucket
}

/// A client rooted at a random prefix of a new bucket.
pub async fn fresh() -> GcsClient {
    let bucket = new_bucket().await;
    client_at(&bucket, &random_name("root")).await
}
