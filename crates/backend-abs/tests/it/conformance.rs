//! The shared backend conformance suite (`replica-conformance`) against Azurite
//! (`REPLICA_AZURE_ENDPOINT`, started by `cargo xtask test`). All cases share one
//! container, created on first use; each client is rooted at a fresh random prefix.
//! Azurite validates SAS signatures, so a client with a wrong account key is refused.

use std::sync::Arc;

use backend_abs::{AccountKey, Credentials};
use replica_core::client::ReplicaClient;

use crate::support;

static CONTAINER: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

async fn fresh_client() -> Arc<dyn ReplicaClient> {
    let container = CONTAINER.get_or_init(support::new_container).await;
    let root = replica_conformance::random_root("conformance");
    Arc::new(support::client_at(container, &root))
}

async fn denied_client() -> Arc<dyn ReplicaClient> {
    let container = CONTAINER.get_or_init(support::new_container).await;
    let root = replica_conformance::random_root("denied");
    // A well-formed key that is not the account's: every signature is wrong.
    let wrong =
        AccountKey::from_base64("d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmc=").expect("key");
    Arc::new(support::client_with(
        &support::url_for(container, &root),
        Credentials::AccountKey(wrong),
    ))
}

replica_conformance::conformance_suite! {
    backend: "abs",
    client: crate::conformance::fresh_client,
    permission_denied: crate::conformance::denied_client,
}
