//! Parsing of `s3://bucket/prefix?option=value…` replica URLs.
//!
//! Parsing is strict: an option we do not know, a repeated option or a value we cannot
//! use is refused rather than ignored, because ignoring it would replicate somewhere (or
//! somehow) the user did not ask for. Credentials never come from the URL: they come
//! from the standard AWS chain (environment, profile, web identity, container or
//! instance role), so a URL can be logged and shown in errors as it is.

use std::fmt;

use replica_core::error::StoreError;
use replica_core::store_url::{self, StoreUrl, UrlRules, UrlText};

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

const RULES: UrlRules = UrlRules {
    schemes: &["s3"],
    form: "s3://bucket/prefix?option=value",
    options: KNOWN_OPTIONS,
    repeatable: &[],
    credentials: "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment, or \
                  use a profile or role (the standard AWS credential chain)",
    public_user: false,
};

impl S3Config {
    /// Parses and validates a replica URL. See the crate docs for the accepted form.
    pub fn parse(input: &str) -> Result<Self, StoreError> {
        let url = StoreUrl::parse(input, RULES)?;
        url.no_user()?;
        let bucket = url.name("bucket")?;
        check_bucket(&bucket).map_err(|e| url.invalid(e))?;
        let mut config = S3Config {
            bucket,
            prefix: url.prefix()?,
            endpoint: None,
            region: None,
            force_path_style: false,
            sse: None,
            storage_class: None,
        };
        let mut force_path_style = None;
        let mut kms_key_id = None;
        for (name, value) in url.options()? {
            if value.is_empty() {
                return Err(url.invalid(format!("option {name:?} has an empty value")));
            }
            let checked = match name.as_str() {
                "endpoint" => store_url::endpoint(&value).map(|e| config.endpoint = Some(e)),
                "region" => check_region(&value).map(|()| config.region = Some(value)),
                "force_path_style" => {
                    store_url::boolean(&name, &value).map(|b| force_path_style = Some(b))
                }
                "sse" => parse_sse(&value).map(|s| config.sse = Some(s)),
                "sse_kms_key_id" => {
                    kms_key_id = Some(value);
                    Ok(())
                }
                _ => check_storage_class(&value).map(|()| config.storage_class = Some(value)),
            };
            checked.map_err(|e| url.invalid(e))?;
        }
        if let Some(id) = kms_key_id {
            match &mut config.sse {
                Some(Sse::Kms { key_id, .. }) => *key_id = Some(id),
                _ => return Err(url.invalid("sse_kms_key_id needs sse=aws:kms (or aws:kms:dsse)")),
            }
        }
        config.force_path_style = force_path_style.unwrap_or(config.endpoint.is_some());
        Ok(config)
    }

    /// The URL in canonical form. It holds nothing secret, since credentials are refused
    /// at parse time and none of the options is a secret.
    pub fn to_url_string(&self) -> String {
        let path_style = (self.force_path_style != self.endpoint.is_some()).then_some(
            if self.force_path_style {
                "true"
            } else {
                "false"
            },
        );
        UrlText::new(format!("s3://{}", self.bucket))
            .path(&self.prefix)
            .option_if("endpoint", self.endpoint.as_deref())
            .option_if("region", self.region.as_deref())
            .option_if("force_path_style", path_style)
            .option_if("sse", self.sse.as_ref().map(Sse::as_str))
            .option_if(
                "sse_kms_key_id",
                self.sse.as_ref().and_then(Sse::kms_key_id),
            )
            .option_if("storage_class", self.storage_class.as_deref())
            .finish()
    }
}

impl fmt::Display for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_url_string())
    }
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

fn check_region(value: &str) -> Result<(), String> {
    if value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Ok(());
    }
    Err(format!(
        "region {value:?} is not a region name (like us-east-1)"
    ))
}

fn parse_sse(value: &str) -> Result<Sse, String> {
    let dsse = match value {
        "AES256" => return Ok(Sse::Aes256),
        "aws:kms" => false,
        "aws:kms:dsse" => true,
        _ => {
            return Err(format!(
                "sse must be AES256, aws:kms or aws:kms:dsse, not {value:?}"
            ));
        }
    };
    Ok(Sse::Kms { key_id: None, dsse })
}

fn check_storage_class(value: &str) -> Result<(), String> {
    if STORAGE_CLASSES.contains(&value) {
        return Ok(());
    }
    let why = if value == "GLACIER" || value == "DEEP_ARCHIVE" {
        " (its objects cannot be read without a restore request first, so the replica \
         could not be restored)"
    } else {
        ""
    };
    Err(format!(
        "storage_class {value:?} is not supported{why}; use one of {}",
        STORAGE_CLASSES.join(", ")
    ))
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
}
