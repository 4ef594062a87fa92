//! `gs://bucket[/prefix][?endpoint=http(s)://host[:port]]` (or `gcs://`, same meaning).

use std::fmt;

use percent_encoding::percent_decode_str;
use replica_core::error::StoreError;
use url::Url;

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

impl GcsConfig {
    pub fn parse(input: &str) -> Result<Self, StoreError> {
        let invalid = |reason: String| StoreError::InvalidUrl {
            url: input.to_owned(),
            reason,
        };
        if has_dot_segment(input) {
            return Err(invalid("'.' and '..' path segments are not allowed".into()));
        }
        let url = Url::parse(input).map_err(|e| invalid(e.to_string()))?;
        let scheme = url.scheme().to_owned();
        if scheme != "gs" && scheme != "gcs" {
            return Err(invalid(format!(
                "scheme {scheme}:// is not gs:// or gcs://"
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "credentials do not belong in the URL; use Application Default \
                 Credentials (GOOGLE_APPLICATION_CREDENTIALS, workload identity, metadata \
                 server)"
                    .into(),
            ));
        }
        if url.port().is_some() {
            return Err(invalid("a bucket name has no port".into()));
        }
        if url.fragment().is_some() {
            return Err(invalid("a fragment (#…) is not allowed".into()));
        }
        let bucket = url.host_str().unwrap_or("").to_owned();
        check_bucket(&bucket).map_err(invalid)?;
        let prefix = parse_prefix(url.path()).map_err(invalid)?;
        let mut endpoint = None;
        for (name, value) in url.query_pairs() {
            match name.as_ref() {
                "endpoint" => {
                    if endpoint.is_some() {
                        return Err(invalid("option endpoint is given more than once".into()));
                    }
                    endpoint = Some(check_endpoint(&value).map_err(invalid)?);
                }
                other => {
                    return Err(invalid(format!(
                        "unknown option {other:?}; known options: {}",
                        KNOWN_OPTIONS.join(", ")
                    )));
                }
            }
        }
        Ok(Self {
            scheme,
            bucket,
            prefix,
            endpoint,
        })
    }

    /// The URL as parsed (no option is secret).
    pub fn to_url_string(&self) -> String {
        let mut s = format!("{}://{}", self.scheme, self.bucket);
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

/// The percent-decoded path, with empty segments dropped (as Go's `path.Join` would);
/// `.` and `..` segments are refused.
fn parse_prefix(path: &str) -> Result<String, String> {
    let decoded = percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| "the path is not valid UTF-8 once percent-decoded".to_owned())?;
    let mut segments = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" => {}
            "." | ".." => return Err("'.' and '..' path segments are not allowed".into()),
            s if s.contains('\0') || s.contains('\\') => {
                return Err("the path contains NUL or '\\'".into());
            }
            s => segments.push(s),
        }
    }
    Ok(segments.join("/"))
}

/// Whether the raw path of `input` has a `.` or `..` segment (which URL parsing would
/// silently resolve away), percent-encoded or not.
fn has_dot_segment(input: &str) -> bool {
    let rest = input.split_once("://").map_or(input, |(_, r)| r);
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    rest.split('/').skip(1).any(|seg| {
        let seg = seg.to_ascii_lowercase().replace("%2e", ".");
        seg == "." || seg == ".."
    })
}

fn check_endpoint(value: &str) -> Result<String, String> {
    let bad = |why: &str| format!("endpoint {value:?}: {why}");
    if value.is_empty() {
        return Err(bad("it is empty"));
    }
    let url = Url::parse(value).map_err(|e| bad(&e.to_string()))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(bad("it must be http://host[:port] or https://host[:port]"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials are not allowed in it"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    if url.path() != "/" && !url.path().is_empty() {
        return Err(bad("it must not have a path"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("it must not have a query or fragment"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
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
        assert!(refused("gs://bkt/a?endpoint=").contains("empty"));
        assert!(refused("s3://bkt/a").contains("scheme"));
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
