//! Azure Blob Storage on Azurite: `abs://account@container/path?endpoint=…`,
//! Litestream's `type: abs`, credentials in `AZURE_STORAGE_ACCOUNT`/`AZURE_STORAGE_KEY`.

use std::process::Command;

use super::{SecretFixture, StoreFixture};
use crate::support::create_abs_container;

struct Azure {
    endpoint: String,
    account: String,
    key: String,
    container: String,
}

impl Azure {
    /// Azurite from the environment and a fresh container on it.
    fn new() -> Azure {
        let var = |k: &str| {
            std::env::var(k).unwrap_or_else(|_| {
                panic!("{k} is not set: run `cargo xtask test` (it starts Azurite)")
            })
        };
        let az = Azure {
            endpoint: var("REPLICA_AZURE_ENDPOINT"),
            account: var("REPLICA_AZURE_ACCOUNT_NAME"),
            key: var("REPLICA_AZURE_ACCOUNT_KEY"),
            container: format!("e2e-{:016x}", rand::random::<u64>()),
        };
        create_abs_container(&az.endpoint, &az.account, &az.key, &az.container);
        az
    }
}

impl StoreFixture for Azure {
    fn scheme(&self) -> &'static str {
        "abs"
    }

    fn url(&self, path: &str) -> String {
        format!(
            "abs://{}@{}/{path}?endpoint={}",
            self.account, self.container, self.endpoint
        )
    }

    fn creds(&self, cmd: &mut Command) {
        cmd.env("AZURE_STORAGE_ACCOUNT", &self.account)
            .env("AZURE_STORAGE_KEY", &self.key)
            .env_remove("AZURE_STORAGE_SAS_TOKEN");
    }

    fn litestream_replica(&self, path: &str) -> String {
        format!(
            "      type: abs\n      account-name: {}\n      account-key: \"{}\"\n      bucket: {}\n      path: {path}\n      endpoint: \"{}\"\n",
            self.account, self.key, self.container, self.endpoint
        )
    }

    /// `prod/app/ltx/9/…`, `prod/app/ltx/0/…`.
    fn key_prefix(&self) -> &'static str {
        "ltx/"
    }
}

impl SecretFixture for Azure {
    /// A well-formed key that is not the account's: Azurite refuses every signature.
    fn marker(&self) -> String {
        "U0VDUkVUTUFSS0VSLXNlY3JldG1hcmtlci1TRUNSRVRNQVJLRVI=".to_owned()
    }

    fn with_secret(&self, cmd: &mut Command, secret: &str) {
        cmd.env("AZURE_STORAGE_ACCOUNT", &self.account)
            .env("AZURE_STORAGE_KEY", secret)
            .env_remove("AZURE_STORAGE_SAS_TOKEN");
    }

    fn refused_url(&self, path: &str) -> String {
        self.url(path)
    }

    fn unreachable_url(&self, path: &str) -> String {
        format!(
            "abs://{}@{}/{path}?endpoint=http://127.0.0.1:9/{}",
            self.account, self.container, self.account
        )
    }
}

impl super::RemoteFixture for Azure {
    fn upstream(&self) -> String {
        super::host_port(&self.endpoint)
    }
}

super::scenarios!(Azure::new();
    replica_writes_and_both_tools_restore,
    litestream_writes_and_replica_restores,
    secret_never_appears_in_output_of_failing_runs,
    rolling_deploy_hands_over_without_loss,
    replication_survives_faults_and_an_outage,
);
