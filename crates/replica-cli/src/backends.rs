//! Finds the backend for a replica URL by its scheme, through the same registry an
//! embedding application uses.

use std::sync::Arc;

use replica_core::client::ReplicaClient;

pub async fn open(url: &str) -> anyhow::Result<Arc<dyn ReplicaClient>> {
    Ok(replica::backends().open(url).await?)
}
