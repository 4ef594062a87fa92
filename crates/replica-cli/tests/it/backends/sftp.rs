//! SFTP on OpenSSH sshd: `sftp://user@host:port/path?key_path=…&host_key=…`, Litestream's
//! `type: sftp`; a password comes from `REPLICA_SFTP_PASSWORD`.

use std::path::PathBuf;
use std::process::Command;

use super::{SecretFixture, StoreFixture};

struct Sftp {
    host: String,
    port: u16,
    user: String,
    key: PathBuf,
    root: String,
    host_key: String,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `cargo xtask test` (it starts sshd for the sftp tests)")
    })
}

/// Percent-encodes what would end or split a URL query value.
fn enc(s: &str) -> String {
    s.replace('%', "%25")
        .replace(' ', "%20")
        .replace('&', "%26")
}

impl Sftp {
    /// sshd from the environment and a fresh directory under its root.
    fn new() -> Sftp {
        let key = PathBuf::from(var("REPLICA_SFTP_KEY"));
        let host_key_file = std::env::var("REPLICA_SFTP_HOST_KEY")
            .map(PathBuf::from)
            .unwrap_or_else(|_| key.with_file_name("host_ed25519.pub"));
        let host_key = std::fs::read_to_string(&host_key_file).expect("reading the host key");
        Sftp {
            host: var("REPLICA_SFTP_HOST"),
            port: var("REPLICA_SFTP_PORT").parse().expect("REPLICA_SFTP_PORT"),
            user: var("REPLICA_SFTP_USER"),
            key,
            root: format!(
                "{}/e2e-{:016x}",
                var("REPLICA_SFTP_ROOT"),
                rand::random::<u64>()
            ),
            host_key: host_key
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    fn path(&self, sub: &str) -> String {
        format!("{}/{sub}", self.root)
    }

    /// The URL without a way to authenticate.
    fn url_without_key(&self, port: u16, sub: &str) -> String {
        format!(
            "sftp://{}@{}:{port}{}?host_key={}",
            self.user,
            self.host,
            self.path(sub),
            enc(&self.host_key)
        )
    }
}

impl StoreFixture for Sftp {
    fn scheme(&self) -> &'static str {
        "sftp"
    }

    fn url(&self, sub: &str) -> String {
        format!(
            "{}&key_path={}",
            self.url_without_key(self.port, sub),
            enc(&self.key.display().to_string())
        )
    }

    /// The key is in the URL; nothing else may offer one.
    fn creds(&self, cmd: &mut Command) {
        cmd.env_remove("SSH_AUTH_SOCK")
            .env_remove("REPLICA_SFTP_PASSWORD");
    }

    fn litestream_replica(&self, sub: &str) -> String {
        format!(
            "      type: sftp\n      host: \"{}:{}\"\n      user: {}\n      key-path: {}\n      path: {}\n",
            self.host,
            self.port,
            self.user,
            self.key.display(),
            self.path(sub)
        )
    }

    /// `…/prod/app/ltx/9/…`, `…/prod/app/ltx/0/…`.
    fn key_prefix(&self) -> &'static str {
        "ltx/"
    }
}

impl SecretFixture for Sftp {
    fn marker(&self) -> String {
        format!("PWMARKER{:016x}", rand::random::<u64>())
    }

    fn with_secret(&self, cmd: &mut Command, secret: &str) {
        cmd.env_remove("SSH_AUTH_SOCK")
            .env("REPLICA_SFTP_PASSWORD", secret);
    }

    /// The emulator's sshd takes keys only: the password is refused.
    fn refused_url(&self, sub: &str) -> String {
        self.url_without_key(self.port, sub)
    }

    fn unreachable_url(&self, sub: &str) -> String {
        self.url_without_key(9, sub)
    }
}

impl super::RemoteFixture for Sftp {
    fn upstream(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// SFTP runs over one long-lived connection: faults are cut connections.
    fn faulty_link(&self) -> Box<dyn crate::support::FaultyLink> {
        Box::new(crate::support::TcpLink::start(&self.upstream()))
    }
}

super::scenarios!(Sftp::new();
    replica_writes_and_both_tools_restore,
    litestream_writes_and_replica_restores,
    secret_never_appears_in_output_of_failing_runs,
    rolling_deploy_hands_over_without_loss,
    replication_survives_faults_and_an_outage,
);
