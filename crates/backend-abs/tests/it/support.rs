//! Shared by the abs test modules: Azurite's settings and clients on it.

use backend_abs::{AbsClient, AbsConfig, AccountKey, Credentials};

pub struct Emulator {
    /// `http://127.0.0.1:19010/devstoreaccount1`
    pub endpoint: String,
    pub account: String,
    pub key: String,
}

pub fn emulator() -> Emulator {
    let var = |name: &str| match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: run `cargo xtask test` (it starts Azurite), or \
             `cargo xtask emulators up azure` and load ~/.cache/replica/emulators/state/env"
        ),
    };
    Emulator {
        endpoint: var("REPLICA_AZURE_ENDPOINT"),
        account: var("REPLICA_AZURE_ACCOUNT_NAME"),
        key: var("REPLICA_AZURE_ACCOUNT_KEY"),
    }
}

pub fn random_name(what: &str) -> String {
    format!("{what}-{:016x}", rand::random::<u64>())
}

pub fn url_for(container: &str, prefix: &str) -> String {
    let emu = emulator();
    format!(
        "abs://{}@{container}/{prefix}?endpoint={}",
        emu.account, emu.endpoint
    )
}

pub fn client_with(url: &str, creds: Credentials) -> AbsClient {
    let config = AbsConfig::parse_with_account(url, None).unwrap_or_else(|e| panic!("{url}: {e}"));
    AbsClient::new(config, creds).unwrap_or_else(|e| panic!("{url}: {e}"))
}

pub fn key_creds() -> Credentials {
    Credentials::AccountKey(AccountKey::from_base64(&emulator().key).expect("emulator key"))
}

/// A client at `prefix` of `container`, authorised with the emulator's account key.
pub fn client_at(container: &str, prefix: &str) -> AbsClient {
    client_with(&url_for(container, prefix), key_creds())
}

/// Creates a new container with a random name.
pub async fn new_container() -> String {
    let name = random_name("replica-test");
    let c = client_at(&name, "");
    c.container_client()
        .expect("container client")
        .create(None)
        .await
        .unwrap_or_else(|e| panic!("creating container {name}: {e}"));
    name
}
