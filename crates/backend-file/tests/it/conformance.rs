//! The shared backend conformance suite (`replica-conformance`), run against the file
//! backend. Each client gets its own temporary directory, removed when the suite drops
//! the client at the end of the case.

use std::sync::Arc;

use backend_file::FileClient;
use replica_core::client::ReplicaClient;

async fn fresh_client() -> Arc<dyn ReplicaClient> {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir
        .path()
        .join(replica_conformance::random_root("conformance"));
    replica_conformance::keep_alive(FileClient::new(root), dir)
}

/// As root, permission bits stop nothing, and a root below a regular file reads as an
/// empty replica (`list` treats ENOTDIR like a missing directory). A root that is a
/// symbolic-link loop fails every operation with ELOOP, which the file backend reports
/// as `StoreError::Other` naming the key: the fallback the suite accepts.
async fn denied_client() -> Arc<dyn ReplicaClient> {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("loop");
    std::os::unix::fs::symlink(&root, &root).expect("symlink");
    replica_conformance::keep_alive(FileClient::new(root), dir)
}

replica_conformance::conformance_suite! {
    backend: "file",
    client: crate::conformance::fresh_client,
    permission_denied: crate::conformance::denied_client,
}
