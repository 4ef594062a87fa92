//! The `sftp://` URL: options, host-key policy, and the redacted form for logs.

use super::*;
use replica_core::store_url::{StoreUrl, UrlRules, UrlText};

/// How the server's host key is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Accept only these keys (OpenSSH public key lines or `SHA256:` fingerprints).
    Pinned(Vec<String>),
    /// Check against a known_hosts file.
    KnownHosts(PathBuf),
    /// Accept anything (warns on every connection).
    Insecure,
}

/// Connection settings parsed from the URL. Holds no secret: the password is read from
/// the environment at connect time.
#[derive(Clone, PartialEq, Eq)]
pub struct SftpConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Absolute directory on the server holding the replica.
    pub root: String,
    pub key_path: Option<PathBuf>,
    pub password_env: String,
    pub host_key: HostKeyPolicy,
}

impl fmt::Debug for SftpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SftpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("root", &self.root)
            .field("key_path", &self.key_path)
            .field("password_env", &self.password_env)
            .field("host_key", &self.host_key)
            .finish()
    }
}

const RULES: UrlRules = UrlRules {
    schemes: &["sftp"],
    form: "sftp://user@host[:port]/path",
    options: &[
        "key_path",
        "key-path",
        "password_env",
        "host_key",
        "host-key",
        "known_hosts",
        "insecure_skip_host_key_check",
    ],
    repeatable: &["host_key", "host-key"],
    credentials: "put the password in an environment variable (SFTP_PASSWORD, or the one \
                  named by password_env=)",
    public_user: true,
};

pub(crate) fn parse_url(raw: &str) -> Result<SftpConfig, StoreError> {
    let url = StoreUrl::parse(raw, RULES)?;
    if url.url().query_pairs().any(|(k, _)| k == "password") {
        return Err(url.invalid(format!(
            "passwords may not be written in the URL; {}",
            RULES.credentials
        )));
    }
    let host = match url.url().host_str() {
        Some(h) if !h.is_empty() => h.trim_start_matches('[').trim_end_matches(']'),
        _ => return Err(url.invalid("no host given; write sftp://user@host/path")),
    };
    let port = url.url().port().unwrap_or(22);
    let user = match url.user()? {
        Some(u) => u,
        None => std::env::var("USER").map_err(|_| {
            url.invalid("no user given and $USER is not set; write sftp://user@host/path")
        })?,
    };
    let path = url.path()?;
    if path.contains('\0') {
        return Err(url.invalid("the path contains a NUL byte"));
    }
    let mut root = path.trim_end_matches('/').to_owned();
    if root.is_empty() {
        root = "/".into();
    }

    let mut key_path = None;
    let mut password_env = DEFAULT_PASSWORD_ENV.to_owned();
    let mut pins = Vec::new();
    let mut known_hosts = None;
    let mut insecure = false;
    for (k, v) in url.options()? {
        match k.as_str() {
            "key_path" | "key-path" => key_path = Some(PathBuf::from(v)),
            "password_env" => password_env = v,
            "host_key" | "host-key" => {
                check_pin(&v).map_err(|e| url.invalid(e))?;
                pins.push(v);
            }
            "known_hosts" => known_hosts = Some(PathBuf::from(v)),
            _ => {
                insecure = match v.as_str() {
                    "" | "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    _ => {
                        return Err(url.invalid(format!(
                            "insecure_skip_host_key_check must be true or false, not {v:?}"
                        )));
                    }
                }
            }
        }
    }
    let host_key = if !pins.is_empty() {
        if insecure {
            return Err(
                url.invalid("host_key and insecure_skip_host_key_check contradict each other")
            );
        }
        HostKeyPolicy::Pinned(pins)
    } else if insecure {
        HostKeyPolicy::Insecure
    } else {
        match known_hosts {
            Some(p) => HostKeyPolicy::KnownHosts(p),
            None => match std::env::home_dir() {
                Some(h) => HostKeyPolicy::KnownHosts(h.join(".ssh").join("known_hosts")),
                None => {
                    return Err(url.invalid(
                        "no home directory for ~/.ssh/known_hosts; give known_hosts=, \
                         host_key= or insecure_skip_host_key_check=true",
                    ));
                }
            },
        }
    };
    Ok(SftpConfig {
        host: host.to_owned(),
        port,
        user,
        root,
        key_path,
        password_env,
        host_key,
    })
}

pub(crate) fn check_pin(v: &str) -> Result<(), String> {
    if v.starts_with("SHA256:") {
        return Ok(());
    }
    PublicKey::from_openssh(v.trim()).map(|_| ()).map_err(|e| {
        format!(
            "host_key must be an OpenSSH public key (\"ssh-ed25519 AAAA…\", space written \
             %20) or a SHA256: fingerprint: {e}"
        )
    })
}

/// The URL as parsed, for logs: no password can be in it (they are refused).
pub(crate) fn redact(cfg: &SftpConfig) -> String {
    let host = if cfg.host.contains(':') {
        format!("[{}]", cfg.host)
    } else {
        cfg.host.clone()
    };
    let port = if cfg.port == 22 {
        String::new()
    } else {
        format!(":{}", cfg.port)
    };
    let user = UrlText::new("").path(&cfg.user).finish();
    UrlText::new(format!(
        "sftp://{}@{host}{port}",
        user.trim_start_matches('/')
    ))
    .path(&cfg.root)
    .finish()
}

pub(crate) fn join(root: &str, key: &str) -> String {
    if key.is_empty() {
        root.to_owned()
    } else if root.ends_with('/') {
        format!("{root}{key}")
    } else {
        format!("{root}/{key}")
    }
}
