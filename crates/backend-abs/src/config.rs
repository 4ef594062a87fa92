//! `abs://` URL parsing.

use replica_core::error::StoreError;
use url::Url;

/// The query options an `abs://` URL may carry.
pub const KNOWN_OPTIONS: &[&str] = &["endpoint"];

/// A parsed `abs://[account@]container[/prefix][?endpoint=…]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsConfig {
    /// The storage account, from the URL's user part, else `AZURE_STORAGE_ACCOUNT`.
    pub account: Option<String>,
    pub container: String,
    /// Key prefix without leading or trailing `/` (empty for the container root).
    pub prefix: String,
    /// `http(s)://host[:port][/path]` of the blob service (Azurite, sovereign clouds),
    /// without a trailing `/`. Without it: `https://<account>.blob.core.windows.net`.
    pub endpoint: Option<String>,
}

fn invalid(url: &str, reason: impl Into<String>) -> StoreError {
    StoreError::InvalidUrl {
        url: redact_input(url),
        reason: reason.into(),
    }
}

/// The input URL as it may be shown: any password and query values other than
/// `endpoint` are replaced (a refused URL may carry a secret by mistake).
fn redact_input(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("REDACTED"));
            }
            if u.query().is_some() {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k == "endpoint" {
                            v.into_owned()
                        } else {
                            "REDACTED".to_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => "<unparsable abs:// URL>".to_owned(),
    }
}

fn valid_container(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

fn valid_account(name: &str) -> bool {
    (3..=24).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl AbsConfig {
    /// Parses `url`; the account falls back to `env_account` (the caller passes
    /// `AZURE_STORAGE_ACCOUNT`).
    pub fn parse_with_account(url: &str, env_account: Option<String>) -> Result<Self, StoreError> {
        let u = Url::parse(url).map_err(|e| invalid(url, e.to_string()))?;
        if u.scheme() != "abs" {
            return Err(invalid(url, "the scheme must be abs://"));
        }
        if u.password().is_some() {
            return Err(invalid(
                url,
                "credentials do not belong in the URL; set AZURE_STORAGE_KEY or \
                 AZURE_STORAGE_SAS_TOKEN, or use Entra ID",
            ));
        }
        if u.fragment().is_some() {
            return Err(invalid(url, "a fragment (#…) is not allowed"));
        }
        if u.port().is_some() {
            return Err(invalid(
                url,
                "a port is not allowed; give the service address as ?endpoint=",
            ));
        }
        let container = u.host_str().unwrap_or_default().to_owned();
        if container.is_empty() {
            return Err(invalid(
                url,
                "no container: use abs://[account@]container/path",
            ));
        }
        if !valid_container(&container) {
            return Err(invalid(
                url,
                format!(
                    "invalid container name {container:?}: 3-63 lowercase letters, digits \
                     and single hyphens"
                ),
            ));
        }
        let account = match u.username() {
            "" => env_account.filter(|a| !a.is_empty()),
            a => Some(a.to_owned()),
        };
        if let Some(a) = &account
            && !valid_account(a)
        {
            return Err(invalid(
                url,
                format!("invalid storage account name {a:?}: 3-24 lowercase letters and digits"),
            ));
        }
        let raw_path = u.path();
        let path = percent_encoding::percent_decode_str(raw_path)
            .decode_utf8()
            .map_err(|_| invalid(url, "the path is not valid UTF-8"))?;
        let prefix = path.trim_matches('/').to_owned();
        if !prefix.is_empty()
            && prefix
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(invalid(url, "the path has an empty, '.' or '..' segment"));
        }
        let mut endpoint = None;
        let mut seen: Vec<String> = Vec::new();
        for (k, v) in u.query_pairs() {
            if seen.iter().any(|s| *s == k) {
                return Err(invalid(url, format!("option {k} is given twice")));
            }
            seen.push(k.to_string());
            match k.as_ref() {
                "endpoint" => endpoint = Some(parse_endpoint(url, &v)?),
                other => {
                    return Err(invalid(
                        url,
                        format!(
                            "unknown option {other:?}; known options: {}",
                            KNOWN_OPTIONS.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(Self {
            account,
            container,
            prefix,
            endpoint,
        })
    }

    /// Parses `url` with the account fallback from `AZURE_STORAGE_ACCOUNT`.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        Self::parse_with_account(url, std::env::var("AZURE_STORAGE_ACCOUNT").ok())
    }

    /// The blob service URL, e.g. `https://acct.blob.core.windows.net` (no trailing `/`).
    pub fn service_url(&self) -> Result<String, StoreError> {
        match (&self.endpoint, &self.account) {
            (Some(e), _) => Ok(e.clone()),
            (None, Some(a)) => Ok(format!("https://{a}.blob.core.windows.net")),
            (None, None) => Err(StoreError::InvalidUrl {
                url: self.to_url_string(),
                reason: "no storage account: use abs://account@container/path or set \
                         AZURE_STORAGE_ACCOUNT"
                    .into(),
            }),
        }
    }

    /// The URL this configuration describes (it never holds a secret).
    pub fn to_url_string(&self) -> String {
        let mut s = String::from("abs://");
        if let Some(a) = &self.account {
            s.push_str(a);
            s.push('@');
        }
        s.push_str(&self.container);
        if !self.prefix.is_empty() {
            s.push('/');
            s.push_str(&self.prefix);
        }
        if let Some(e) = &self.endpoint {
            s.push_str("?endpoint=");
            s.push_str(e);
        }
        s
    }
}

fn parse_endpoint(url: &str, value: &str) -> Result<String, StoreError> {
    let e = Url::parse(value)
        .map_err(|err| invalid(url, format!("endpoint {value:?} is not a URL: {err}")))?;
    if e.scheme() != "http" && e.scheme() != "https" {
        return Err(invalid(url, "the endpoint must be http:// or https://"));
    }
    if e.host_str().is_none_or(str::is_empty) {
        return Err(invalid(url, "the endpoint has no host"));
    }
    if !e.username().is_empty() || e.password().is_some() {
        return Err(invalid(url, "the endpoint must not carry credentials"));
    }
    if e.query().is_some() || e.fragment().is_some() {
        return Err(invalid(
            url,
            "the endpoint must not have a query or fragment (a SAS goes in \
             AZURE_STORAGE_SAS_TOKEN)",
        ));
    }
    Ok(e.as_str().trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(url: &str) -> Result<AbsConfig, StoreError> {
        AbsConfig::parse_with_account(url, None)
    }

    #[test]
    fn forms() {
        let c = p("abs://acct@ctr/a/b").expect("parse");
        assert_eq!(c.account.as_deref(), Some("acct"));
        assert_eq!((c.container.as_str(), c.prefix.as_str()), ("ctr", "a/b"));
        assert_eq!(
            c.service_url().expect("svc"),
            "https://acct.blob.core.windows.net"
        );
        let c =
            AbsConfig::parse_with_account("abs://ctr/db/", Some("envacct".into())).expect("parse");
        assert_eq!(c.account.as_deref(), Some("envacct"));
        assert_eq!(c.prefix, "db");
        let c = p("abs://ctr?endpoint=http://127.0.0.1:10000/devstoreaccount1/").expect("parse");
        assert_eq!(c.prefix, "");
        assert_eq!(
            c.service_url().expect("svc"),
            "http://127.0.0.1:10000/devstoreaccount1"
        );
        assert!(p("abs://ctr/db").expect("parse").service_url().is_err());
    }

    #[test]
    fn refusals() {
        for url in [
            "s3://ctr/db",
            "abs://acct:key@ctr/db",
            "abs:///db",
            "abs://Bad_Container/db",
            "abs://ctr:99/db",
            "abs://ctr/db?region=x",
            "abs://ctr/db?endpoint=http://a&endpoint=http://b",
            "abs://ctr/db?endpoint=ftp://a",
            "abs://ctr/db?endpoint=http://a/?sig=x",
            "abs://ctr/a//b",
            "abs://ctr/db#frag",
            "abs://UPPER@ctr/db",
        ] {
            assert!(p(url).is_err(), "{url} accepted");
        }
        let e = p("abs://acct:topsecret@ctr/db").expect_err("refused");
        assert!(!e.to_string().contains("topsecret"), "{e}");
        let e = p("abs://ctr/db?sas=topsecret").expect_err("refused");
        assert!(!e.to_string().contains("topsecret"), "{e}");
    }
}
