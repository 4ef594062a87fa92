//! S3 on moto: `s3://bucket/path?endpoint=…`, Litestream's `type: s3` with its `%04x`
//! level layout, credentials in `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use super::{SecretFixture, StoreFixture};

pub struct S3 {
    endpoint: String,
    key: String,
    secret: String,
    bucket: String,
    /// Where this fixture's replicas go in the bucket: a fresh prefix where the
    /// bucket is shared (SeaweedFS), empty where the bucket is the fixture's own.
    prefix: String,
    /// The server checks signatures (SeaweedFS): a wrong secret is refused.
    checks_signatures: bool,
}

impl S3 {
    /// The emulator from the environment and a fresh bucket on it.
    pub fn new() -> S3 {
        let endpoint = std::env::var("REPLICA_S3_ENDPOINT").unwrap_or_else(|_| {
            panic!(
                "REPLICA_S3_ENDPOINT is not set: run `cargo xtask test` (it starts the S3 emulator)"
            )
        });
        let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
        let s3 = S3 {
            endpoint,
            key: env("REPLICA_S3_ACCESS_KEY_ID", "test"),
            secret: env("REPLICA_S3_SECRET_ACCESS_KEY", "test"),
            bucket: format!("e2e-{:016x}", rand::random::<u64>()),
            prefix: String::new(),
            checks_signatures: false,
        };
        s3.create_bucket();
        s3
    }

    /// SeaweedFS, the S3 emulator that checks signatures, and a fresh prefix of its
    /// one bucket.
    pub fn seaweed() -> S3 {
        let var = |k: &str| {
            std::env::var(k).unwrap_or_else(|_| {
                panic!("{k} is not set: run `cargo xtask test` (it starts SeaweedFS)")
            })
        };
        S3 {
            endpoint: var("REPLICA_SEAWEED_ENDPOINT"),
            key: var("REPLICA_SEAWEED_ACCESS_KEY_ID"),
            secret: var("REPLICA_SEAWEED_SECRET_ACCESS_KEY"),
            bucket: var("REPLICA_SEAWEED_BUCKET"),
            prefix: format!("e2e-{:016x}/", rand::random::<u64>()),
            checks_signatures: true,
        }
    }

    /// The emulator's endpoint, `http://host:port`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// moto does not check signatures, so a plain PUT creates the bucket.
    fn create_bucket(&self) {
        let hostport = self
            .endpoint
            .strip_prefix("http://")
            .expect("the emulator endpoint is http://");
        let mut conn = TcpStream::connect(hostport).expect("connecting to the S3 emulator");
        write!(
            conn,
            "PUT /{} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.bucket
        )
        .expect("sending CreateBucket");
        let mut resp = String::new();
        conn.read_to_string(&mut resp)
            .expect("reading CreateBucket");
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "CreateBucket failed: {resp}"
        );
    }
}

impl StoreFixture for S3 {
    fn scheme(&self) -> &'static str {
        "s3"
    }

    fn url(&self, path: &str) -> String {
        format!(
            "s3://{}/{}{path}?endpoint={}&region=us-east-1&force_path_style=true",
            self.bucket, self.prefix, self.endpoint
        )
    }

    fn creds(&self, cmd: &mut Command) {
        cmd.env("AWS_ACCESS_KEY_ID", &self.key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN");
    }

    fn litestream_replica(&self, path: &str) -> String {
        format!(
            "      type: s3\n      bucket: {}\n      path: {}{path}\n      endpoint: {}\n      region: us-east-1\n      force-path-style: true\n",
            self.bucket, self.prefix, self.endpoint
        )
    }

    /// `prod/app/0009/…`, `prod/app/0000/…`.
    fn key_prefix(&self) -> &'static str {
        "000"
    }
}

impl SecretFixture for S3 {
    fn marker(&self) -> String {
        format!("SECRETMARKER{:016x}", rand::random::<u64>())
    }

    fn with_secret(&self, cmd: &mut Command, secret: &str) {
        let key_id = if self.checks_signatures {
            self.key.as_str()
        } else {
            "AKIDTESTKEY"
        };
        cmd.env("AWS_ACCESS_KEY_ID", key_id)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN");
    }

    /// SeaweedFS refuses the wrong secret itself; moto accepts any signature, so
    /// there a bucket that does not exist is what fails.
    fn refused_url(&self, path: &str) -> String {
        if self.checks_signatures {
            return self.url(path);
        }
        format!(
            "s3://no-such-bucket-{:x}/{path}?endpoint={}&region=us-east-1",
            rand::random::<u32>(),
            self.endpoint
        )
    }

    fn unreachable_url(&self, path: &str) -> String {
        format!("s3://bucket/{path}?endpoint=http://127.0.0.1:9&region=us-east-1")
    }
}

impl super::RemoteFixture for S3 {
    fn upstream(&self) -> String {
        super::host_port(&self.endpoint)
    }
}

super::scenarios!(S3::new();
    replica_writes_and_both_tools_restore,
    litestream_writes_and_replica_restores,
    secret_never_appears_in_output_of_failing_runs,
    rolling_deploy_hands_over_without_loss,
    replication_survives_faults_and_an_outage,
);
