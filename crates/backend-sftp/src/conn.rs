//! One SSH connection and its SFTP channel: host-key checks, authentication.

use super::*;

/// Why a connection could not be made. Never carries a password.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("cannot reach {addr}")]
    Unreachable { addr: String, source: io::Error },
    #[error("SSH handshake with {addr} failed: {detail}")]
    Handshake { addr: String, detail: String },
    #[error("{0}")]
    HostKey(String),
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    Setup(String),
}

pub(crate) struct Handler {
    policy: HostKeyPolicy,
    host: String,
    port: u16,
    /// Why the host key was refused, for the error.
    refusal: Arc<StdMutex<Option<String>>>,
}

impl Handler {
    fn check(&self, key: &PublicKey) -> Result<(), String> {
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        let addr = format!("{}:{}", self.host, self.port);
        match &self.policy {
            HostKeyPolicy::Insecure => {
                warn!(
                    host = %addr,
                    fingerprint = %fp,
                    "insecure_skip_host_key_check is set: accepting the SSH host key \
                     without verification"
                );
                Ok(())
            }
            HostKeyPolicy::Pinned(pins) => {
                let ok = pins.iter().any(|p| {
                    if p.starts_with("SHA256:") {
                        *p == fp
                    } else {
                        PublicKey::from_openssh(p.trim())
                            .is_ok_and(|pk| pk.key_data() == key.key_data())
                    }
                });
                if ok {
                    Ok(())
                } else {
                    Err(format!(
                        "host key verification failed for {addr}: the server presented \
                         {} key {fp}, which does not match the pinned host_key; refusing \
                         to connect (possible man-in-the-middle, or the server's key \
                         changed)",
                        key.algorithm()
                    ))
                }
            }
            HostKeyPolicy::KnownHosts(path) => {
                let known =
                    russh::keys::known_hosts::known_host_keys_path(&self.host, self.port, path)
                        .map_err(|e| {
                            format!(
                                "host key verification failed for {addr}: cannot read known_hosts \
                         file {}: {e}",
                                path.display()
                            )
                        })?;
                if known.iter().any(|(_, k)| k.key_data() == key.key_data()) {
                    return Ok(());
                }
                if let Some((line, _)) =
                    known.iter().find(|(_, k)| k.algorithm() == key.algorithm())
                {
                    return Err(format!(
                        "host key verification failed for {addr}: the {} host key \
                         changed (now {fp}; {}:{line} records another); refusing to \
                         connect (possible man-in-the-middle)",
                        key.algorithm(),
                        path.display()
                    ));
                }
                Err(format!(
                    "host key verification failed for {addr}: unknown host ({} key {fp} \
                     is not in {}); add it (ssh-keyscan -p {} {} >> {}), pin it with \
                     host_key=, or set insecure_skip_host_key_check=true",
                    key.algorithm(),
                    path.display(),
                    self.port,
                    self.host,
                    path.display()
                ))
            }
        }
    }
}

impl russh::client::Handler for Handler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match server_public_key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            russh::keys::PublicKeyOrCertificate::Certificate(c) => {
                PublicKey::from(c.public_key().clone())
            }
        };
        match self.check(&key) {
            Ok(()) => Ok(true),
            Err(msg) => {
                if let Ok(mut r) = self.refusal.lock() {
                    *r = Some(msg);
                }
                Ok(false)
            }
        }
    }
}

pub(crate) struct Conn {
    handle: russh::client::Handle<Handler>,
    pub(crate) sftp: Arc<RawSftpSession>,
    pub(crate) posix_rename: bool,
    pub(crate) fsync: bool,
}

impl Conn {
    pub(crate) fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }
}

pub(crate) async fn connect(cfg: &SftpConfig) -> Result<Conn, ConnectError> {
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let refusal = Arc::new(StdMutex::new(None));
    let handler = Handler {
        policy: cfg.host_key.clone(),
        host: cfg.host.clone(),
        port: cfg.port,
        refusal: refusal.clone(),
    };
    let config = Arc::new(russh::client::Config {
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        ..Default::default()
    });
    let tcp = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::net::TcpStream::connect((cfg.host.as_str(), cfg.port)),
    )
    .await
    .map_err(|_| ConnectError::Unreachable {
        addr: addr.clone(),
        source: io::Error::new(ErrorKind::TimedOut, "connection timed out"),
    })?
    .map_err(|source| ConnectError::Unreachable {
        addr: addr.clone(),
        source,
    })?;
    let _ = tcp.set_nodelay(true);
    let mut handle = match russh::client::connect_stream(config, tcp, handler).await {
        Ok(h) => h,
        Err(e) => {
            let refused = refusal.lock().ok().and_then(|mut r| r.take());
            return Err(match refused {
                Some(msg) => ConnectError::HostKey(msg),
                None => ConnectError::Handshake {
                    addr,
                    detail: e.to_string(),
                },
            });
        }
    };
    authenticate(&mut handle, cfg, &addr).await?;

    let channel = handle
        .channel_open_session()
        .await
        .map_err(|e| ConnectError::Setup(format!("opening an SSH channel to {addr}: {e}")))?;
    channel
        .request_subsystem(true, "sftp")
        .await
        .map_err(|e| ConnectError::Setup(format!("starting the sftp subsystem on {addr}: {e}")))?;
    let sftp = RawSftpSession::new(channel.into_stream());
    sftp.set_timeout(60);
    let version = sftp
        .init()
        .await
        .map_err(|e| ConnectError::Setup(format!("SFTP handshake with {addr}: {e}")))?;
    let has = |name: &str| version.extensions.contains_key(name);
    debug!(host = %addr, extensions = ?version.extensions.keys(), "SFTP connected");
    Ok(Conn {
        posix_rename: has(POSIX_RENAME),
        fsync: has(FSYNC),
        handle,
        sftp: Arc::new(sftp),
    })
}

pub(crate) async fn authenticate(
    handle: &mut russh::client::Handle<Handler>,
    cfg: &SftpConfig,
    addr: &str,
) -> Result<(), ConnectError> {
    let user = cfg.user.as_str();
    let mut tried: Vec<String> = Vec::new();
    let handshake = |e: russh::Error| ConnectError::Handshake {
        addr: addr.to_owned(),
        detail: e.to_string(),
    };

    if let Some(path) = &cfg.key_path {
        let key = russh::keys::load_secret_key(path, None).map_err(|e| {
            ConnectError::Auth(format!(
                "cannot load the private key {}: {e}",
                path.display()
            ))
        })?;
        let hash = handle
            .best_supported_rsa_hash()
            .await
            .map_err(handshake)?
            .flatten();
        let res = handle
            .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
            .await
            .map_err(handshake)?;
        if res.success() {
            return Ok(());
        }
        tried.push(format!("the key {}", path.display()));
    } else if std::env::var_os("SSH_AUTH_SOCK").is_some() {
        match russh::keys::agent::client::AgentClient::connect_env().await {
            Ok(mut agent) => {
                let ids = agent.request_identities().await.unwrap_or_default();
                let n = ids.len();
                for id in ids {
                    let russh::keys::agent::AgentIdentity::PublicKey { key, .. } = id else {
                        continue;
                    };
                    match handle
                        .authenticate_publickey_with(user, key, None, &mut agent)
                        .await
                    {
                        Ok(r) if r.success() => return Ok(()),
                        Ok(_) => {}
                        Err(e) => debug!(error = %e, "ssh-agent signing failed"),
                    }
                }
                tried.push(format!("{n} ssh-agent key(s)"));
            }
            Err(e) => debug!(error = %e, "ssh-agent unavailable"),
        }
    }

    if let Ok(password) = std::env::var(&cfg.password_env) {
        let res = handle
            .authenticate_password(user, password)
            .await
            .map_err(handshake)?;
        if res.success() {
            return Ok(());
        }
        tried.push(format!("the password from ${}", cfg.password_env));
    }

    Err(ConnectError::Auth(if tried.is_empty() {
        format!(
            "no SSH credentials for {user}@{addr}: give key_path=, run an ssh-agent, or \
             set ${}",
            cfg.password_env
        )
    } else {
        format!(
            "SSH authentication as {user}@{addr} failed (tried {})",
            tried.join(", ")
        )
    }))
}
