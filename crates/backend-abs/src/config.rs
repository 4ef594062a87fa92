//! `abs://` URL parsing.

use replica_core::error::StoreError;
use replica_core::store_url::{self, StoreUrl, UrlRules, UrlText};

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

const RULES: UrlRules = UrlRules {
    schemes: &["abs"],
    form: "abs://[account@]container/path",
    options: KNOWN_OPTIONS,
    repeatable: &[],
    credentials: "set AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN, or use Entra ID",
    public_user: true,
};

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
        let u = StoreUrl::parse(url, RULES)?;
        let container = u.name("container")?;
        if !valid_container(&container) {
            return Err(u.invalid(format!(
                "invalid container name {container:?}: 3-63 lowercase letters, digits and \
                 single hyphens"
            )));
        }
        let account = u.user()?.or(env_account).filter(|a| !a.is_empty());
        if let Some(a) = &account
            && !valid_account(a)
        {
            return Err(u.invalid(format!(
                "invalid storage account name {a:?}: 3-24 lowercase letters and digits"
            )));
        }
        let mut endpoint = None;
        for (_endpoint, value) in u.options()? {
            // A SAS in the endpoint's query would be a secret in the URL.
            endpoint =
                Some(store_url::endpoint(&value).map_err(|e| {
                    u.invalid(format!("{e} (a SAS goes in AZURE_STORAGE_SAS_TOKEN)"))
                })?);
        }
        Ok(Self {
            account,
            container,
            prefix: u.prefix()?,
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
        let account = self
            .account
            .as_ref()
            .map(|a| format!("{a}@"))
            .unwrap_or_default();
        UrlText::new(format!("abs://{account}{}", self.container))
            .path(&self.prefix)
            .option_if("endpoint", self.endpoint.as_deref())
            .finish()
    }
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
        assert_eq!(p("abs://ctr/a//b/").expect("parse").prefix, "a/b");
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
