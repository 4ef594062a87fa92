//! `gs://bucket[/prefix][?endpoint=http(s)://host[:port]]` (or `gcs://`, same meaning).

use std::fmt;

use replica_core::error::StoreError;
use replica_core::store_url::{self, StoreUrl, UrlRules, UrlText};

/// The options a URL may carry.
pub const KNOWN_OPTIONS: &[&str] = &["endpoint"];

/// The environment variable naming an emulator (Litestream and Google's SDKs read it too).
pub const EMULATOR_ENV: &str = "STORAGE_EMULATOR_HOST";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcsConfig {
    /// `gs` or `gcs`, as written.
    pub scheme: String,
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the bucket root.
    pub prefix: String,
    /// `http(s)://host[:port]` from the `endpoint` option, without a trailing `/`.
    pub endpoint: Option<String>,
}

const RULES: UrlRules = UrlRules {
    schemes: &["gs", "gcs"],
    form: "gs://bucket/prefix",
    options: KNOWN_OPTIONS,
    repeatable: &[],
    credentials: "use Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, \
                  workload identity, metadata server)",
    public_user: false,
};

impl GcsConfig {
    pub fn parse(input: &str) -> Result<Self, StoreError> {
        let url = StoreUrl::parse(input, RULES)?;
        url.no_user()?;
        let bucket = url.name("bucket")?;
        check_bucket(&bucket).map_err(|e| url.invalid(e))?;
        let mut endpoint = None;
        for (_endpoint, value) in url.options()? {
            endpoint = Some(check_endpoint(&value).map_err(|e| url.invalid(e))?);
        }
        Ok(Self {
            scheme: url.url().scheme().to_owned(),
            bucket,
            prefix: url.prefix()?,
            endpoint,
        })
    }

    /// The URL as parsed (no option is secret).
    pub fn to_url_string(&self) -> String {
        UrlText::new(format!("{}://{}", self.scheme, self.bucket))
            .path(&self.prefix)
            .option_if("endpoint", self.endpoint.as_deref())
            .finish()
    }
}

impl fmt::Display for GcsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_url_string())
    }
}

/// GCS bucket names: 3–63 characters (up to 222 with dots), lowercase letters, digits,
/// `-`, `_` and `.`, starting and ending with a letter or digit.
fn check_bucket(bucket: &str) -> Result<(), String> {
    if bucket.is_empty() {
        return Err("no bucket: write gs://BUCKET/PREFIX".into());
    }
    let max = if bucket.contains('.') { 222 } else { 63 };
    let ok_chars = bucket
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if bucket.len() < 3
        || bucket.len() > max
        || !ok_chars
        || !ends_ok(bucket.chars().next())
        || !ends_ok(bucket.chars().last())
    {
        return Err(format!(
            "{bucket:?} is not a valid bucket name (3-63 lowercase letters, digits, '-', \
             '_' or '.', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// An endpoint is a server's address only: the JSON API paths are fixed.
fn check_endpoint(value: &str) -> Result<String, String> {
    let endpoint = store_url::endpoint(value)?;
    let has_path = endpoint
        .split_once("://")
        .is_some_and(|(_, rest)| rest.contains('/'));
    if has_path {
        return Err(format!("endpoint {value:?} must not have a path"));
    }
    Ok(endpoint)
}

/// `STORAGE_EMULATOR_HOST` as an endpoint: `host:port` (as Go's SDK accepts it) gets
/// `http://`.
pub fn emulator_endpoint(value: &str) -> Result<String, String> {
    let value = value.trim();
    let with_scheme = if value.contains("://") {
        value.to_owned()
    } else {
        format!("http://{value}")
    };
    check_endpoint(&with_scheme).map_err(|e| format!("{EMULATOR_ENV}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> GcsConfig {
        GcsConfig::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn refused(s: &str) -> String {
        match GcsConfig::parse(s) {
            Err(StoreError::InvalidUrl { reason, .. }) => reason,
            other => panic!("{s}: expected InvalidUrl, got {other:?}"),
        }
    }

    #[test]
    fn forms() {
        let c = ok("gs://my-bucket/db/main");
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str()),
            ("my-bucket", "db/main")
        );
        assert_eq!(c.endpoint, None);
        assert_eq!(
            ok("gcs://my-bucket//db/x/?endpoint=http://127.0.0.1:4443/").to_url_string(),
            "gcs://my-bucket/db/x?endpoint=http://127.0.0.1:4443"
        );
        let c = ok("gcs://my-bucket?endpoint=http://127.0.0.1:4443");
        assert_eq!(c.prefix, "");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:4443"));
        assert_eq!(ok("gs://b_1.x/a%20b/c").prefix, "a b/c");
        assert_eq!(ok("gs://bkt/a//b/").prefix, "a/b");
    }

    #[test]
    fn refusals() {
        assert!(refused("gs://bkt/a/./b").contains("'.'"));
        assert!(refused("gs://bkt/a?region=x").contains("unknown option"));
        assert!(
            refused("gs://bkt/a?endpoint=http://h&endpoint=http://h").contains("more than once")
        );
        assert!(refused("gs://user:pw@bkt/a").contains("credentials"));
        assert!(refused("gs:///a").contains("bucket"));
        assert!(refused("gs://Bad_Bucket/a").contains("bucket"));
        assert!(refused("gs://ab/a").contains("bucket"));
        assert!(refused("gs://bkt:123/a").contains("port"));
        assert!(refused("gs://bkt/a?endpoint=ftp://h").contains("endpoint"));
        assert!(refused("gs://bkt/a?endpoint=http://h/x").contains("path"));
        assert!(refused("gs://bkt/a?endpoint=").contains("endpoint"));
        assert!(refused("s3://bkt/a").contains("gs://"));
        assert!(refused("gs://bkt/a#f").contains("fragment"));
    }

    #[test]
    fn emulator_host() {
        assert_eq!(
            emulator_endpoint("127.0.0.1:4443").as_deref(),
            Ok("http://127.0.0.1:4443")
        );
        assert_eq!(
            emulator_endpoint("http://localhost:1/").as_deref(),
            Ok("http://localhost:1")
        );
        assert!(emulator_endpoint("http://h/p").is_err());
    }
}
