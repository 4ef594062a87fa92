//! Shared by the sftp test modules: the emulator (OpenSSH sshd started by
//! `cargo xtask test`) from the environment, and clients rooted at fresh directories.

use std::path::PathBuf;

use backend_sftp::SftpClient;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

const SET: &AsciiSet = &CONTROLS.add(b' ').add(b'&').add(b'%').add(b'#').add(b'?');

pub fn enc(s: &str) -> String {
    utf8_percent_encode(s, SET).to_string()
}

#[derive(Debug, Clone)]
pub struct Emulator {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub key: PathBuf,
    pub root: String,
    /// The server's public host key line (`ssh-ed25519 AAAA… comment`).
    pub host_key: String,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `cargo xtask test` (it starts sshd for the sftp tests)")
    })
}

pub fn emulator() -> Emulator {
    let key = PathBuf::from(var("REPLICA_SFTP_KEY"));
    let host_key_file = std::env::var("REPLICA_SFTP_HOST_KEY")
        .map(PathBuf::from)
        .unwrap_or_else(|_| key.with_file_name("host_ed25519.pub"));
    let host_key = std::fs::read_to_string(&host_key_file)
        .unwrap_or_else(|e| panic!("reading the host key {}: {e}", host_key_file.display()));
    Emulator {
        host: var("REPLICA_SFTP_HOST"),
        port: var("REPLICA_SFTP_PORT").parse().expect("REPLICA_SFTP_PORT"),
        user: var("REPLICA_SFTP_USER"),
        key,
        root: var("REPLICA_SFTP_ROOT"),
        host_key: host_key.trim().to_owned(),
    }
}

impl Emulator {
    /// The public key part of the host key line, without its comment.
    pub fn host_key_pin(&self) -> String {
        self.host_key
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `sftp://user@host:port/<root>/<sub>?key_path=…&host_key=…` plus `extra` options.
    pub fn url(&self, sub: &str, extra: &str) -> String {
        let mut u = format!(
            "sftp://{}@{}:{}{}/{}?key_path={}",
            self.user,
            self.host,
            self.port,
            self.root,
            sub,
            enc(&self.key.display().to_string()),
        );
        if !extra.contains("host_key")
            && !extra.contains("known_hosts")
            && !extra.contains("insecure")
        {
            u.push_str(&format!("&host_key={}", enc(&self.host_key_pin())));
        }
        if !extra.is_empty() {
            u.push('&');
            u.push_str(extra);
        }
        u
    }

    pub fn client(&self, sub: &str) -> SftpClient {
        SftpClient::parse(&self.url(sub, "")).expect("parse sftp URL")
    }
}
