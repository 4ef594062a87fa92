//! The shared backend conformance suite (`replica-conformance`) against fake-gcs-server
//! (`REPLICA_GCS_ENDPOINT`, started by `cargo xtask test`). All cases share one bucket,
//! created on first use; each client is rooted at a fresh random prefix of it.
//!
//! No `permission_denied` hook: the emulator is anonymous and has no IAM, so it cannot
//! refuse a request (`permission_denied` is reported as skipped for that reason).

use std::sync::Arc;

use replica_core::client::ReplicaClient;

use crate::support;

static BUCKET: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

async fn fresh_client() -> Arc<dyn ReplicaClient> {
    let bucket = BUCKET.get_or_init(support::new_bucket).await;
    let root = replica_conformance::random_root("conformance");
    Arc::new(support::client_at(bucket, &root).await)
}

replica_conformance::conformance_suite! {
    backend: "gcs",
    client: crate::conformance::fresh_client,
}
