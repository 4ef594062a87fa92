//! Shared by the S3 test modules: the emulator's settings and clients on it.

use aws_config::BehaviorVersion;
use aws_sdk_s3::config::Credentials;
use backend_s3::{S3Client, S3Config};

pub struct Emulator {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
}

/// SeaweedFS, the S3 emulator that checks signatures (`REPLICA_SEAWEED_*`, started by
/// `cargo xtask test`), and its one bucket.
pub fn seaweed() -> (Emulator, String) {
    let var = |name: &str| match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: run `cargo xtask test` (it starts SeaweedFS), or              `cargo xtask emulators up seaweedfs` and load its env file"
        ),
    };
    (
        Emulator {
            endpoint: var("REPLICA_SEAWEED_ENDPOINT"),
            access_key: var("REPLICA_SEAWEED_ACCESS_KEY_ID"),
            secret_key: var("REPLICA_SEAWEED_SECRET_ACCESS_KEY"),
        },
        var("REPLICA_SEAWEED_BUCKET"),
    )
}

pub fn emulator() -> Emulator {
    let endpoint = match std::env::var("REPLICA_S3_ENDPOINT") {
        Ok(e) if !e.is_empty() => e,
        _ => panic!(
            "REPLICA_S3_ENDPOINT is not set: run `cargo xtask test` (it starts the S3 \
             emulator), or start one yourself and set REPLICA_S3_ENDPOINT=http://host:port"
        ),
    };
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "test".to_owned())
    };
    Emulator {
        endpoint,
        access_key: var("REPLICA_S3_ACCESS_KEY_ID"),
        secret_key: var("REPLICA_S3_SECRET_ACCESS_KEY"),
    }
}

pub fn random_name(what: &str) -> String {
    format!("{what}-{:016x}", rand::random::<u64>())
}

pub async fn client_for(url: &str) -> S3Client {
    client_with(&emulator(), url).await
}

/// A client for `url` signing with `emu`'s credentials.
pub async fn client_with(emu: &Emulator, url: &str) -> S3Client {
    let (access_key, secret_key) = (emu.access_key.clone(), emu.secret_key.clone());
    let loader = aws_config::defaults(BehaviorVersion::latest()).credentials_provider(
        Credentials::new(access_key, secret_key, None, None, "replica-tests"),
    );
    let config = S3Config::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    S3Client::from_config_with_loader(config, loader)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// A client at `prefix` (may be empty) of `bucket`, through `endpoint`.
pub async fn client_at(endpoint: &str, bucket: &str, prefix: &str) -> S3Client {
    client_for(&format!(
        "s3://{bucket}/{prefix}?endpoint={endpoint}&region=us-east-1"
    ))
    .await
}

pub async fn new_bucket() -> String {
    let bucket = random_name("replica-test");
    let c = client_at(&emulator().endpoint, &bucket, "").await;
    c.sdk_client()
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "creating bucket {bucket}: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        });
    bucket
}

/// A client rooted at a random prefix of a new bucket.
pub async fn fresh() -> S3Client {
    let bucket = new_bucket().await;
    client_at(&emulator().endpoint, &bucket, &random_name("root")).await
}
