//! The shared backend conformance suite against OpenSSH sshd on 127.0.0.1 (started by
//! `cargo xtask test`). Each client is rooted at a fresh random directory under
//! `REPLICA_SFTP_ROOT`.

use std::sync::Arc;

use replica_core::client::ReplicaClient;

use crate::support;

async fn fresh_client() -> Arc<dyn ReplicaClient> {
    let emu = support::emulator();
    let root = replica_conformance::random_root("conformance");
    Arc::new(emu.client(&root))
}

/// A client rooted in a directory the test user may not write or read: sshd runs as
/// root here, so a root-owned directory does not help; instead authentication for a
/// user sshd refuses makes every operation a permission failure.
async fn denied_client() -> Arc<dyn ReplicaClient> {
    let emu = support::emulator();
    let wrong_key = emu.key.with_file_name("host_ed25519");
    let url = format!(
        "sftp://{}@{}:{}{}/denied?key_path={}&host_key={}",
        emu.user,
        emu.host,
        emu.port,
        emu.root,
        support::enc(&wrong_key.display().to_string()),
        support::enc(&emu.host_key_pin()),
    );
    Arc::new(backend_sftp::SftpClient::parse(&url).expect("parse"))
}

replica_conformance::conformance_suite! {
    backend: "sftp",
    client: crate::conformance::fresh_client,
    permission_denied: crate::conformance::denied_client,
}
