//! The `sftp://` URL: options, host-key policy, and the redacted form for logs.

use super::*;

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

pub(crate) const QUERY_SET: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'&')
    .add(b'%');

pub(crate) fn parse_url(raw: &str) -> Result<SftpConfig, StoreError> {
    // Never echo a URL that may hold a password.
    let shown = |u: &Url| {
        let mut u = u.clone();
        let _ = u.set_password(None);
        u.to_string()
    };
    let url = Url::parse(raw).map_err(|e| StoreError::InvalidUrl {
        url: "sftp://…".into(),
        reason: e.to_string(),
    })?;
    let invalid = |reason: String| StoreError::InvalidUrl {
        url: shown(&url),
        reason,
    };
    if url.scheme() != "sftp" {
        return Err(invalid(format!(
            "the sftp backend only handles sftp:// URLs, not {}://",
            url.scheme()
        )));
    }
    if url.password().is_some() {
        return Err(invalid(format!(
            "passwords may not be written in the URL; put it in an environment variable \
             ({DEFAULT_PASSWORD_ENV}, or the one named by password_env=)"
        )));
    }
    let host = match url.host_str() {
        Some(h) if !h.is_empty() => h.trim_start_matches('[').trim_end_matches(']'),
        _ => return Err(invalid("no host given; write sftp://user@host/path".into())),
    };
    let port = url.port().unwrap_or(22);
    let user = if url.username().is_empty() {
        std::env::var("USER").map_err(|_| {
            invalid("no user given and $USER is not set; write sftp://user@host/path".into())
        })?
    } else {
        percent_decode_str(url.username())
            .decode_utf8()
            .map_err(|_| invalid("the user name is not UTF-8".into()))?
            .into_owned()
    };
    if url.fragment().is_some() {
        return Err(invalid(
            "sftp URLs may not have a fragment; write a '#' in the path as %23".into(),
        ));
    }
    let path = percent_decode_str(url.path())
        .decode_utf8()
        .map_err(|_| invalid("the path is not UTF-8".into()))?;
    if path.contains('\0') {
        return Err(invalid("the path contains a NUL byte".into()));
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
    for pair in url
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode_str(v)
            .decode_utf8()
            .map_err(|_| invalid(format!("the value of {k} is not UTF-8")))?
            .into_owned();
        match k {
            "key_path" | "key-path" => key_path = Some(PathBuf::from(v)),
            "password_env" => password_env = v,
            "host_key" | "host-key" => {
                check_pin(&v).map_err(invalid)?;
                pins.push(v);
            }
            "known_hosts" => known_hosts = Some(PathBuf::from(v)),
            "insecure_skip_host_key_check" => {
                insecure = match v.as_str() {
                    "" | "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    _ => {
                        return Err(invalid(format!(
                            "insecure_skip_host_key_check must be true or false, not {v:?}"
                        )));
                    }
                }
            }
            "password" => {
                return Err(invalid(format!(
                    "passwords may not be written in the URL; set the environment \
                     variable {DEFAULT_PASSWORD_ENV} (or name one with password_env=)"
                )));
            }
            _ => {
                return Err(invalid(format!(
                    "unknown option {k:?}; the sftp backend understands key_path, \
                     password_env, host_key, known_hosts and insecure_skip_host_key_check"
                )));
            }
        }
    }
    let host_key = if !pins.is_empty() {
        if insecure {
            return Err(invalid(
                "host_key and insecure_skip_host_key_check contradict each other".into(),
            ));
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
                    return Err(invalid(
                        "no home directory for ~/.ssh/known_hosts; give known_hosts=, \
                         host_key= or insecure_skip_host_key_check=true"
                            .into(),
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
    let mut s = format!(
        "sftp://{}@{}",
        utf8_percent_encode(&cfg.user, QUERY_SET),
        if cfg.host.contains(':') {
            format!("[{}]", cfg.host)
        } else {
            cfg.host.clone()
        }
    );
    if cfg.port != 22 {
        s.push_str(&format!(":{}", cfg.port));
    }
    s.push_str(&utf8_percent_encode(&cfg.root, QUERY_SET).to_string());
    s
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
