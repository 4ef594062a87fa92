//! GCS on fake-gcs-server: `gs://bucket/path?endpoint=…` (also spelled `gcs://`),
//! Litestream's `type: gs` with `STORAGE_EMULATOR_HOST`, reading the `ltx/<level>/`
//! layout. The emulator is anonymous, so there is no secret to keep.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use tempfile::TempDir;

use super::{StoreFixture, assert_replica_restores, replicate_a_workload};

struct Gcs {
    endpoint: String,
    bucket: String,
}

impl Gcs {
    /// The emulator from the environment and a fresh bucket on it.
    fn new() -> Gcs {
        let endpoint = std::env::var("REPLICA_GCS_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| {
                panic!(
                    "REPLICA_GCS_ENDPOINT is not set: run `cargo xtask test` (it starts \
                     fake-gcs-server)"
                )
            });
        let gcs = Gcs {
            endpoint,
            bucket: format!("e2e-{:016x}", rand::random::<u64>()),
        };
        gcs.create_bucket();
        gcs
    }

    /// The emulator is anonymous: a plain JSON API insert creates the bucket.
    fn create_bucket(&self) {
        let hostport = self
            .endpoint
            .strip_prefix("http://")
            .expect("the emulator endpoint is http://")
            .trim_end_matches('/');
        let body = format!("{{\"name\":\"{}\"}}", self.bucket);
        let mut conn = TcpStream::connect(hostport).expect("connecting to the GCS emulator");
        write!(
            conn,
            "POST /storage/v1/b?project=test HTTP/1.1\r\nHost: {hostport}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("sending buckets.insert");
        let mut resp = String::new();
        conn.read_to_string(&mut resp)
            .expect("reading buckets.insert");
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "buckets.insert failed: {resp}"
        );
    }
}

impl StoreFixture for Gcs {
    fn scheme(&self) -> &'static str {
        "gs"
    }

    fn url(&self, path: &str) -> String {
        format!("gs://{}/{path}?endpoint={}", self.bucket, self.endpoint)
    }

    /// `replica` gets the emulator in the URL and must not depend on
    /// `STORAGE_EMULATOR_HOST`.
    fn creds(&self, cmd: &mut Command) {
        cmd.env_remove("STORAGE_EMULATOR_HOST")
            .env_remove("GOOGLE_APPLICATION_CREDENTIALS");
    }

    /// Litestream reads the emulator from `STORAGE_EMULATOR_HOST`.
    fn litestream_env(&self, cmd: &mut Command) {
        cmd.env("STORAGE_EMULATOR_HOST", &self.endpoint);
    }

    fn litestream_replica(&self, path: &str) -> String {
        format!(
            "      type: gs\n      bucket: {}\n      path: {path}\n",
            self.bucket
        )
    }

    /// `prod/app/ltx/9/…`, `prod/app/ltx/0/…`.
    fn key_prefix(&self) -> &'static str {
        "ltx/"
    }
}

impl super::RemoteFixture for Gcs {
    fn upstream(&self) -> String {
        super::host_port(&self.endpoint)
    }
}

super::scenarios!(Gcs::new();
    replica_writes_and_both_tools_restore,
    litestream_writes_and_replica_restores,
    rolling_deploy_hands_over_without_loss,
    replication_survives_faults_and_an_outage,
);

/// `gcs://` names the same replica as `gs://`.
#[test]
fn gcs_scheme_is_an_alias_of_gs() {
    let gcs = Gcs::new();
    let dir = TempDir::new().expect("tempdir");
    let url = gcs.url("prod/app");
    let source = replicate_a_workload(&gcs, &dir.path().join("app.db"), &url);
    let alias = url.replacen("gs://", "gcs://", 1);
    assert_replica_restores(&gcs, &alias, &dir.path().join("alias.db"), &source);
}
