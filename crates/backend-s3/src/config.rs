//! Parsing of `s3://bucket/prefix?option=value…` replica URLs.
//!
//! Parsing is strict: an option we do not know, a repeated option or a value we cannot
//! use is refused rather than ignored, because ignoring it would replicate somewhere (or
//! somehow) the user did not ask for. Credentials never come from the URL: they come
//! from the standard AWS chain (environment, profile, web identity, container or
//! instance role), so a URL can be logged and shown in errors as it is.

use std::fmt::{self, Write as _};

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use replica_core::error::StoreError;
use url::Url;

/// The query options the URL understands, in the order they are listed in errors.
pub const KNOWN_OPTIONS: &[&str] = &[
    "endpoint",
    "region",
    "force_path_style",
    "sse",
    "sse_kms_key_id",
    "storage_class",
];

/// Storage classes whose objects can be read back at once. `GLACIER` and
/// `DEEP_ARCHIVE` are refused: their objects need a restore request before a GET, so a
/// replica written with them could not be restored.
const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "REDUCED_REDUNDANCY",
    "EXPRESS_ONEZONE",
    "OUTPOSTS",
];

/// Server-side encryption requested for every object written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sse {
    /// `sse=AES256`: S3-managed keys (SSE-S3).
    Aes256,
    /// `sse=aws:kms` (or `aws:kms:dsse` with `dsse: true`), optionally with
    /// `sse_kms_key_id`; without one S3 uses the account's default KMS key.
    Kms { key_id: Option<String>, dsse: bool },
}

impl Sse {
    pub fn as_str(&self) -> &'static str {
        match self {
            Sse::Aes256 => "AES256",
            Sse::Kms { dsse: false, .. } => "aws:kms",
            Sse::Kms { dsse: true, .. } => "aws:kms:dsse",
        }
    }

    pub fn kms_key_id(&self) -> Option<&str> {
        match self {
            Sse::Kms { key_id, .. } => key_id.as_deref(),
            Sse::Aes256 => None,
        }
    }
}

/// A parsed, validated `s3://` replica URL. Parsing does no I/O; turning it into a
/// client ([`crate::S3Client::from_config`]) loads the AWS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// The key prefix every object lives under, without leading or trailing `/`
    /// (empty for the bucket root). `s3://b/a//b/` gives `a/b`, as Litestream's
    /// `path.Join` would, so both tools agree on where objects live.
    pub prefix: String,
    /// A custom endpoint (`http(s)://host[:port][/path]`) for S3-compatible stores.
    pub endpoint: Option<String>,
    /// An explicit region; otherwise the AWS chain decides, else `us-east-1` when an
    /// endpoint is given.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`). Defaults to true when an endpoint
    /// is given (most S3-compatible stores need it), false for AWS.
    pub force_path_style: bool,
    pub sse: Option<Sse>,
    pub storage_class: Option<String>,
}

/// Characters escaped when a prefix is written back into a URL.
const PATH_ESCAPE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Characters escaped in a query value written back into a URL.
const QUERY_ESCAPE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b'<')
    .add(b'=')
    .add(b'>');

impl S3Config {
    /// Parses and validates a replica URL. See the crate docs for the accepted form.
    pub fn parse(input: &str) -> Result<Self, StoreError> {
        let invalid = |reason: String| StoreError::InvalidUrl {
            url: redact_raw(input),
            reason,
        };
        let url = Url::parse(input).map_err(|e| {
            invalid(format!(
                "{e}; write s3://bucket/prefix?option=value (options: {})",
                KNOWN_OPTIONS.join(", ")
            ))
        })?;
        if url.scheme() != "s3" {
            return Err(invalid(format!(
                "the s3 backend only handles s3:// URLs, not {}:",
                url.scheme()
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "credentials may not be given in the URL; set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY in the environment, or use a profile or role \
                 (the standard AWS credential chain)"
                    .into(),
            ));
        }
        let bucket = match url.host_str() {
            Some(h) if !h.is_empty() => h.to_owned(),
            _ => {
                return Err(invalid(
                    "no bucket given; write s3://bucket/prefix (two slashes, bucket first)".into(),
                ));
            }
        };
        check_bucket(&bucket).map_err(&invalid)?;
        if let Some(port) = url.port() {
            return Err(invalid(format!(
                "the bucket may not have a port (:{port}); to use an S3-compatible \
                 server give it as ?endpoint=http://host:{port}"
            )));
        }
        if let Some(f) = url.fragment() {
            return Err(invalid(format!(
                "s3 URLs may not have a fragment (#{f}); remove it, or percent-encode a \
                 '#' that is part of the prefix as %23"
            )));
        }
        // The URL parser resolves '.' and '..' segments (even encoded ones) away, so
        // look for them in the input as written.
        if has_dot_segment(input) {
            return Err(invalid(
                "the prefix has a '.' or '..' segment; write the prefix out".into(),
            ));
        }
        let prefix = parse_prefix(url.path()).map_err(&invalid)?;

        let mut endpoint = None;
        let mut region = None;
        let mut force_path_style = None;
        let mut sse = None;
        let mut kms_key_id = None;
        let mut storage_class = None;
        let mut seen: Vec<String> = Vec::new();
        for (name, value) in url.query_pairs() {
            let name = name.into_owned();
            if !KNOWN_OPTIONS.contains(&name.as_str()) {
                return Err(invalid(format!(
                    "unknown option {name:?}; the known options are {}",
                    KNOWN_OPTIONS.join(", ")
                )));
            }
            if seen.contains(&name) {
                return Err(invalid(format!("option {name:?} is given more than once")));
            }
            seen.push(name.clone());
            if value.is_empty() {
                return Err(invalid(format!("option {name:?} has an empty value")));
            }
            let value = value.into_owned();
            match name.as_str() {
                "endpoint" => endpoint = Some(check_endpoint(&value).map_err(&invalid)?),
                "region" => {
                    if !value
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    {
                        return Err(invalid(format!(
                            "region {value:?} is not a region name (like us-east-1)"
                        )));
                    }
                    region = Some(value);
                }
                "force_path_style" => {
                    force_path_style = Some(match value.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(invalid(format!(
                                "force_path_style must be true or false, not {value:?}"
                            )));
                        }
                    });
                }
                "sse" => {
                    sse = Some(match value.as_str() {
                        "AES256" => Sse::Aes256,
                        "aws:kms" => Sse::Kms {
                            key_id: None,
                            dsse: false,
                        },
                        "aws:kms:dsse" => Sse::Kms {
                            key_id: None,
                            dsse: true,
                        },
                        _ => {
                            return Err(invalid(format!(
                                "sse must be AES256, aws:kms or aws:kms:dsse, not {value:?}"
                            )));
                        }
                    });
                }
                "sse_kms_key_id" => kms_key_id = Some(value),
                "storage_class" => {
                    if !STORAGE_CLASSES.contains(&value.as_str()) {
                        let why = if value == "GLACIER" || value == "DEEP_ARCHIVE" {
                            " (its objects cannot be read without a restore request first, \
                             so the replica could not be restored)"
                        } else {
                            ""
                        };
                        return Err(invalid(format!(
                            "storage_class {value:?} is not supported{why}; use one of {}",
                            STORAGE_CLASSES.join(", ")
                        )));
                    }
                    storage_class = Some(value);
                }
                _ => unreachable_option(&name),
            }
        }
        if let Some(id) = kms_key_id {
            match &mut sse {
                Some(Sse::Kms { key_id, .. }) => *key_id = Some(id),
                _ => {
                    return Err(invalid(
                        "sse_kms_key_id needs sse=aws:kms (or aws:kms:dsse)".into(),
                    ));
                }
            }
        }
        let force_path_style = force_path_style.unwrap_or(endpoint.is_some());
        Ok(S3Config {
            bucket,
            prefix,
            endpoint,
            region,
            force_path_style,
            sse,
            storage_class,
        })
    }

    /// The URL in canonical form. It holds nothing secret, since credentials are refused
    /// at parse time and none of the options is a secret.
    pub fn to_url_string(&self) -> String {
        let mut s = format!("s3://{}", self.bucket);
        if !self.prefix.is_empty() {
            s.push('/');
            s.extend(utf8_percent_encode(&self.prefix, PATH_ESCAPE));
        }
        let mut sep = '?';
        let mut opt = |s: &mut String, name: &str, value: &str| {
            let _ = write!(
                s,
                "{sep}{name}={}",
                utf8_percent_encode(value, QUERY_ESCAPE)
            );
            sep = '&';
        };
        if let Some(e) = &self.endpoint {
            opt(&mut s, "endpoint", e);
        }
        if let Some(r) = &self.region {
            opt(&mut s, "region", r);
        }
        if self.force_path_style != self.endpoint.is_some() {
            opt(
                &mut s,
                "force_path_style",
                if self.force_path_style {
                    "true"
                } else {
                    "false"
                },
            );
        }
        if let Some(sse) = &self.sse {
            opt(&mut s, "sse", sse.as_str());
            if let Some(id) = sse.kms_key_id() {
                opt(&mut s, "sse_kms_key_id", id);
            }
        }
        if let Some(c) = &self.storage_class {
            opt(&mut s, "storage_class", c);
        }
        s
    }
}

impl fmt::Display for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_url_string())
    }
}

// Every name reaching the match is in KNOWN_OPTIONS; a new option added there but not
// handled is a programming error that the unit tests catch.
fn unreachable_option(name: &str) {
    debug_assert!(false, "option {name} is known but not handled");
}

/// Bucket names as S3 and the common S3-compatible stores accept them: letters,
/// digits, '.', '-' and '_', starting and ending with a letter or digit.
fn check_bucket(bucket: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    let ends_ok = bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if bucket.len() < 3 || bucket.len() > 255 || !bucket.chars().all(ok_char) || !ends_ok {
        return Err(format!(
            "{bucket:?} is not a valid bucket name (3-63 letters, digits, '.' or '-', \
             starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// Decodes the URL path into a key prefix. Empty segments are dropped (`a//b/` is
/// `a/b`) as Go's `path.Join` in Litestream does; `.` and `..` segments are refused.
fn parse_prefix(path: &str) -> Result<String, String> {
    let decoded = percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| "the prefix is not valid UTF-8 once percent-decoded".to_owned())?;
    let mut segments = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" => {}
            "." | ".." => {
                return Err(format!(
                    "the prefix {decoded:?} has a '.' or '..' segment; write it out"
                ));
            }
            s if s.contains(|c: char| c.is_control()) => {
                return Err("the prefix contains control characters".into());
            }
            s => segments.push(s),
        }
    }
    Ok(segments.join("/"))
}

/// Whether the path of a raw `scheme://authority/path?…` string has a `.` or `..`
/// segment, plain or percent-encoded.
fn has_dot_segment(input: &str) -> bool {
    let Some(i) = input.find("://") else {
        return false;
    };
    let after = &input[i + 3..];
    let end = after.find(['?', '#']).unwrap_or(after.len());
    let Some(start) = after[..end].find('/') else {
        return false;
    };
    after[start..end].split('/').any(|seg| {
        let seg = seg.to_ascii_lowercase().replace("%2e", ".");
        seg == "." || seg == ".."
    })
}

fn check_endpoint(value: &str) -> Result<String, String> {
    let url = Url::parse(value).map_err(|e| {
        format!(
            "endpoint {value:?} is not a URL ({e}); write it with its scheme, e.g. \
             endpoint=http://127.0.0.1:9000"
        )
    })?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "endpoint must be an http:// or https:// URL, not {}:",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("endpoint has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "endpoint may not carry credentials; use the AWS environment or a \
                    profile for them"
                .into(),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("endpoint may not have a query or fragment".into());
    }
    // Keep it as given, minus the trailing '/' the parser adds to an empty path.
    let mut s = url.to_string();
    if url.path() == "/" && s.ends_with('/') {
        s.pop();
    }
    Ok(s)
}

/// The raw URL for error messages, with anything that might be secret masked: the
/// user-info part of the authority, and the values of options we do not know (a user
/// might have tried `?secret_access_key=…`). Works on unparsable input too.
pub(crate) fn redact_raw(input: &str) -> String {
    let (head, query) = match input.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (input, None),
    };
    let mut out = String::new();
    match head.find("://") {
        Some(i) => {
            let after = &head[i + 3..];
            let auth_end = after.find(['/', '#']).unwrap_or(after.len());
            let (authority, rest) = after.split_at(auth_end);
            out.push_str(&head[..i + 3]);
            match authority.rfind('@') {
                Some(at) => {
                    out.push_str("***@");
                    out.push_str(&authority[at + 1..]);
                }
                None => out.push_str(authority),
            }
            out.push_str(rest);
        }
        None => out.push_str(head),
    }
    if let Some(q) = query {
        let (q, frag) = match q.split_once('#') {
            Some((q, f)) => (q, Some(f)),
            None => (q, None),
        };
        out.push('?');
        let parts: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, value)) => {
                    let known = percent_decode_str(name)
                        .decode_utf8()
                        .is_ok_and(|n| KNOWN_OPTIONS.contains(&n.as_ref()));
                    if known || value.is_empty() {
                        pair.to_owned()
                    } else {
                        format!("{name}=***")
                    }
                }
                None => pair.to_owned(),
            })
            .collect();
        out.push_str(&parts.join("&"));
        if let Some(f) = frag {
            out.push('#');
            out.push_str(f);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> S3Config {
        match S3Config::parse(s) {
            Ok(c) => c,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    fn refused(s: &str) -> String {
        match S3Config::parse(s) {
            Ok(c) => panic!("{s} was accepted as {c:?}"),
            Err(StoreError::InvalidUrl { url, reason }) => format!("{url}: {reason}"),
            Err(e) => panic!("{s}: wrong error {e:?}"),
        }
    }

    #[test]
    fn minimal_url() {
        let c = ok("s3://my-bucket");
        assert_eq!(c.bucket, "my-bucket");
        assert_eq!(c.prefix, "");
        assert_eq!(c.endpoint, None);
        assert_eq!(c.region, None);
        assert!(!c.force_path_style);
        assert_eq!(c.sse, None);
        assert_eq!(c.storage_class, None);
        assert_eq!(c.to_url_string(), "s3://my-bucket");
        assert_eq!(ok("s3://my-bucket/").prefix, "");
    }

    #[test]
    fn prefix_is_normalised_like_path_join() {
        assert_eq!(ok("s3://b.example/backups/db").prefix, "backups/db");
        assert_eq!(ok("s3://bucket//backups//db/").prefix, "backups/db");
        assert_eq!(ok("s3://bucket/a%20b/c%23d").prefix, "a b/c#d");
        assert_eq!(
            ok("s3://bucket/a%20b/c%23d").to_url_string(),
            "s3://bucket/a%20b/c%23d"
        );
    }

    #[test]
    fn every_option() {
        let c = ok(
            "s3://bucket/p?endpoint=http://127.0.0.1:19000&region=us-east-1\
                    &force_path_style=true&sse=aws:kms&sse_kms_key_id=arn:aws:kms:k\
                    &storage_class=STANDARD_IA",
        );
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:19000"));
        assert_eq!(c.region.as_deref(), Some("us-east-1"));
        assert!(c.force_path_style);
        assert_eq!(
            c.sse,
            Some(Sse::Kms {
                key_id: Some("arn:aws:kms:k".into()),
                dsse: false
            })
        );
        assert_eq!(c.storage_class.as_deref(), Some("STANDARD_IA"));
        // The canonical form parses back to the same thing.
        assert_eq!(ok(&c.to_url_string()), c);
    }

    #[test]
    fn endpoint_implies_path_style_unless_told_otherwise() {
        assert!(ok("s3://bucket?endpoint=http://localhost:9000").force_path_style);
        let c = ok("s3://bucket?endpoint=https://s3.example.com&force_path_style=false");
        assert!(!c.force_path_style);
        assert_eq!(ok(&c.to_url_string()), c);
        let c = ok("s3://bucket?force_path_style=true");
        assert!(c.force_path_style);
        assert_eq!(ok(&c.to_url_string()), c);
    }

    #[test]
    fn sse_forms() {
        assert_eq!(ok("s3://bucket?sse=AES256").sse, Some(Sse::Aes256));
        assert_eq!(
            ok("s3://bucket?sse=aws:kms").sse,
            Some(Sse::Kms {
                key_id: None,
                dsse: false
            })
        );
        assert_eq!(
            ok("s3://bucket?sse=aws:kms:dsse").sse,
            Some(Sse::Kms {
                key_id: None,
                dsse: true
            })
        );
    }

    #[test]
    fn endpoint_keeps_an_explicit_path() {
        assert_eq!(
            ok("s3://bucket?endpoint=https://host.example/s3").endpoint,
            Some("https://host.example/s3".into())
        );
        assert_eq!(
            ok("s3://bucket?endpoint=https://host.example/").endpoint,
            Some("https://host.example".into())
        );
    }

    #[test]
    fn refuses_credentials_and_hides_them() {
        for url in [
            "s3://AKIAXXXX:hunter2secret@bucket/p",
            "s3://hunter2secret@bucket/p",
        ] {
            let msg = refused(url);
            assert!(msg.contains("environment"), "{msg}");
            assert!(!msg.contains("hunter2secret"), "{msg}");
        }
        let msg = refused("s3://bucket?endpoint=http://user:hunter2secret@host:9000");
        assert!(msg.contains("credentials"), "{msg}");
    }

    #[test]
    fn refuses_unknown_options_naming_them_and_the_known_ones() {
        let msg = refused("s3://bucket/p?region=us-east-1&secret_access_key=hunter2secret");
        assert!(msg.contains("\"secret_access_key\""), "{msg}");
        for known in KNOWN_OPTIONS {
            assert!(msg.contains(known), "{msg}");
        }
        assert!(!msg.contains("hunter2secret"), "{msg}");
        assert!(refused("s3://bucket?forcePathStyle=true").contains("forcePathStyle"));
    }

    #[test]
    fn refuses_missing_or_bad_bucket() {
        for url in ["s3:///prefix", "s3://", "s3:bucket/prefix", "s3:/bucket"] {
            assert!(refused(url).contains("bucket"), "{url}");
        }
        for url in [
            "s3://a/p",
            "s3://-bucket/p",
            "s3://bucket-/p",
            "s3://buck%20et/p",
            "s3://bu*ket/p",
        ] {
            assert!(refused(url).contains("bucket name"), "{url}");
        }
    }

    #[test]
    fn refuses_bad_values() {
        for (url, needle) in [
            ("s3://bucket?region=", "empty"),
            ("s3://bucket?region=US East", "region"),
            ("s3://bucket?force_path_style=yes", "true or false"),
            ("s3://bucket?sse=aes256", "AES256"),
            ("s3://bucket?sse_kms_key_id=k", "sse=aws:kms"),
            ("s3://bucket?sse=AES256&sse_kms_key_id=k", "sse=aws:kms"),
            ("s3://bucket?storage_class=GLACIER", "restore"),
            ("s3://bucket?storage_class=DEEP_ARCHIVE", "restore"),
            ("s3://bucket?storage_class=standard", "STANDARD_IA"),
            ("s3://bucket?endpoint=localhost:9000", "http"),
            ("s3://bucket?endpoint=127.0.0.1:9000", "scheme"),
            ("s3://bucket?endpoint=ftp://host", "http"),
            ("s3://bucket?endpoint=http://host?x=1", "query"),
            (
                "s3://bucket?region=us-east-1&region=eu-west-1",
                "more than once",
            ),
            ("s3://bucket:9000/p", "endpoint"),
            ("s3://bucket/p#frag", "fragment"),
            ("s3://bucket/a/%2e%2e/b", "'..'"),
            ("s3://bucket/a/../b", "'..'"),
            ("s3://bucket/./b", "'..'"),
            ("s3://bucket/a%00b", "control"),
            ("s3://bucket/%ff", "UTF-8"),
            ("file:///tmp/x", "s3://"),
            ("not a url", "s3://bucket/prefix"),
        ] {
            let msg = refused(url);
            assert!(msg.contains(needle), "{url}: {msg}");
        }
    }

    #[test]
    fn redaction_of_raw_input() {
        assert_eq!(
            redact_raw("s3://k:s@bucket/p?x=1"),
            "s3://***@bucket/p?x=***"
        );
        assert_eq!(
            redact_raw("s3://bucket/p?region=us-east-1&token=abc#f"),
            "s3://bucket/p?region=us-east-1&token=***#f"
        );
        assert_eq!(redact_raw("garbage"), "garbage");
    }
}
