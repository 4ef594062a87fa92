//! Strict parsing of replica URLs (`scheme://authority/prefix?option=value…`), shared by
//! every backend so that they agree on what a URL may hold.
//!
//! One rule set: an unknown or repeated option, a fragment, a password, or a `.`/`..`
//! prefix segment is refused rather than ignored, because ignoring it would replicate
//! somewhere (or somehow) the user did not ask for. Empty prefix segments are dropped
//! (`a//b/` is `a/b`), as Go's `path.Join` does in Litestream, so both tools agree on
//! where objects live. A URL shown in an error is first [`redact`]ed: the user may have
//! written a secret into it by mistake.
//!
//! What a backend still decides: which schemes and options it takes, what its
//! authority means (bucket, container, host) and what each option's value may be.

use std::fmt::Write as _;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use url::Url;

use crate::error::StoreError;

/// What a backend's URLs look like.
#[derive(Debug, Clone, Copy)]
pub struct UrlRules {
    /// Accepted schemes, without `://`.
    pub schemes: &'static [&'static str],
    /// The form shown when the URL cannot be parsed, e.g. `s3://bucket/prefix`.
    pub form: &'static str,
    /// Query options the backend understands; their values are shown in errors.
    pub options: &'static [&'static str],
    /// Options that may be given more than once.
    pub repeatable: &'static [&'static str],
    /// Where credentials go instead of the URL, for the error refusing a password.
    pub credentials: &'static str,
    /// Whether the authority's user part names something (an account, a login) that
    /// may be shown; otherwise it is masked like a password.
    pub public_user: bool,
}

/// A parsed replica URL that passed the common rules.
#[derive(Debug, Clone)]
pub struct StoreUrl {
    url: Url,
    shown: String,
    rules: UrlRules,
}

impl StoreUrl {
    pub fn parse(input: &str, rules: UrlRules) -> Result<Self, StoreError> {
        let invalid = |reason: String| StoreError::InvalidUrl {
            url: redact(input, rules.options, rules.public_user),
            reason,
        };
        let url = Url::parse(input).map_err(|e| {
            let options = match rules.options {
                [] => String::new(),
                o => format!(" (options: {})", o.join(", ")),
            };
            invalid(format!("{e}; write {}{options}", rules.form))
        })?;
        if !rules.schemes.contains(&url.scheme()) {
            return Err(invalid(format!(
                "this backend handles {}:// URLs, not {}://",
                rules.schemes.join("://, "),
                url.scheme()
            )));
        }
        if url.password().is_some() {
            return Err(invalid(format!(
                "credentials may not be written in the URL; {}",
                rules.credentials
            )));
        }
        if url.fragment().is_some() {
            return Err(invalid(
                "a URL may not have a fragment; write a '#' that belongs to the path as %23".into(),
            ));
        }
        // The URL parser resolves '.' and '..' segments (even encoded ones) away, so
        // look for them in the input as written.
        if has_dot_segment(input) {
            return Err(invalid(
                "the path has a '.' or '..' segment; write the path out".into(),
            ));
        }
        let shown = redact(input, rules.options, rules.public_user);
        Ok(StoreUrl { url, shown, rules })
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// An `InvalidUrl` error for this URL (redacted).
    pub fn invalid(&self, reason: impl Into<String>) -> StoreError {
        StoreError::InvalidUrl {
            url: self.shown.clone(),
            reason: reason.into(),
        }
    }

    /// The authority's host as a name (`what`: "bucket", "container"), refusing an
    /// empty one and a port (an S3-compatible server's address is an `endpoint`).
    pub fn name(&self, what: &str) -> Result<String, StoreError> {
        let name = self.url.host_str().unwrap_or_default();
        if name.is_empty() {
            return Err(self.invalid(format!("no {what} given; write {}", self.rules.form)));
        }
        if let Some(port) = self.url.port() {
            return Err(self.invalid(format!(
                "a {what} has no port (:{port}); give a server's address as \
                 ?endpoint=http://host:{port}"
            )));
        }
        Ok(name.to_owned())
    }

    /// Refuses a user name: the backend takes credentials from its environment.
    pub fn no_user(&self) -> Result<(), StoreError> {
        if self.url.username().is_empty() {
            return Ok(());
        }
        Err(self.invalid(format!(
            "credentials may not be written in the URL; {}",
            self.rules.credentials
        )))
    }

    /// The percent-decoded user name, if any.
    pub fn user(&self) -> Result<Option<String>, StoreError> {
        match self.url.username() {
            "" => Ok(None),
            u => decode(u, "the user name")
                .map(Some)
                .map_err(|e| self.invalid(e)),
        }
    }

    /// The path as a key prefix: percent-decoded, without leading, trailing or empty
    /// segments; control characters and `\` are refused, as in keys.
    pub fn prefix(&self) -> Result<String, StoreError> {
        let decoded = decode(self.url.path(), "the path").map_err(|e| self.invalid(e))?;
        if decoded.contains(|c: char| c.is_control() || c == '\\') {
            return Err(self.invalid("the path contains a control character or '\\'"));
        }
        let segments: Vec<&str> = decoded.split('/').filter(|s| !s.is_empty()).collect();
        Ok(segments.join("/"))
    }

    /// The percent-decoded path as written (for backends whose path is a directory).
    pub fn path(&self) -> Result<String, StoreError> {
        decode(self.url.path(), "the path").map_err(|e| self.invalid(e))
    }

    /// The query options, each known, none repeated unless the rules allow it.
    pub fn options(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut out: Vec<(String, String)> = Vec::new();
        let pairs = self.url.query().unwrap_or_default().split('&');
        for pair in pairs.filter(|p| !p.is_empty()) {
            // Percent-decoding only: a '+' is itself (base64 keys hold them), not a space.
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(name, "an option name").map_err(|e| self.invalid(e))?;
            let value =
                decode(value, &format!("the value of {name}")).map_err(|e| self.invalid(e))?;
            if !self.rules.options.contains(&name.as_str()) {
                return Err(self.invalid(match self.rules.options {
                    [] => format!("unknown option {name:?}; this backend takes no options"),
                    known => format!(
                        "unknown option {name:?}; the known options are {}",
                        known.join(", ")
                    ),
                }));
            }
            if !self.rules.repeatable.contains(&name.as_str())
                && out.iter().any(|(n, _)| *n == name)
            {
                return Err(self.invalid(format!("option {name:?} is given more than once")));
            }
            out.push((name, value));
        }
        Ok(out)
    }
}

fn decode(raw: &str, what: &str) -> Result<String, String> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("{what} is not valid UTF-8 once percent-decoded"))
}

/// Whether the path of a raw `scheme://authority/path?…` string has a `.` or `..`
/// segment, plain or percent-encoded.
fn has_dot_segment(input: &str) -> bool {
    let rest = input.split_once("://").map_or(input, |(_, r)| r);
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    rest.split('/').skip(1).any(|seg| {
        let seg = seg.to_ascii_lowercase().replace("%2e", ".");
        seg == "." || seg == ".."
    })
}

/// Checks an `endpoint` option: an `http(s)://host[:port][/path]` URL without
/// credentials, query or fragment, returned without a trailing `/`.
pub fn endpoint(value: &str) -> Result<String, String> {
    let url = Url::parse(value).map_err(|e| {
        format!(
            "endpoint {value:?} is not a URL ({e}); write it with its scheme, e.g. \
             endpoint=http://127.0.0.1:9000"
        )
    })?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "endpoint must be an http:// or https:// URL, not {}://",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("endpoint {value:?} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("endpoint may not carry credentials".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("endpoint may not have a query or fragment".into());
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// A boolean option's value.
pub fn boolean(name: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{name} must be true or false, not {value:?}")),
    }
}

/// The raw URL for messages, with anything that might be secret masked: a password,
/// the user name unless `public_user`, and the values of options not in `public` (a
/// user might have tried `?secret_access_key=…`). Works on unparsable input too.
pub fn redact(input: &str, public: &[&str], public_user: bool) -> String {
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
            match authority.rsplit_once('@') {
                Some((user, host)) => {
                    let (name, password) = match user.split_once(':') {
                        Some((name, _)) => (name, ":***"),
                        None => (user, ""),
                    };
                    let name = if public_user { name } else { "***" };
                    let _ = write!(out, "{name}{password}@{host}");
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
                    let public = percent_decode_str(name)
                        .decode_utf8()
                        .is_ok_and(|n| public.contains(&n.as_ref()));
                    if public || value.is_empty() {
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

/// Characters escaped when a path is written back into a URL (or into an SQLite URI).
pub(crate) const PATH_ESCAPE: &AsciiSet = &CONTROLS
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

/// Writes a canonical URL back: `UrlText::new("s3://bucket").path("a/b").option(…)`.
#[derive(Debug)]
pub struct UrlText {
    text: String,
    sep: char,
}

impl UrlText {
    /// `base` is `scheme://authority`, already in URL form.
    pub fn new(base: impl Into<String>) -> Self {
        UrlText {
            text: base.into(),
            sep: '?',
        }
    }

    /// Appends a path (`/` added in front when missing; nothing when empty).
    pub fn path(mut self, path: &str) -> Self {
        if !path.is_empty() && !path.starts_with('/') {
            self.text.push('/');
        }
        self.text.extend(utf8_percent_encode(path, PATH_ESCAPE));
        self
    }

    pub fn option(mut self, name: &str, value: &str) -> Self {
        let _ = write!(
            self.text,
            "{}{name}={}",
            self.sep,
            utf8_percent_encode(value, QUERY_ESCAPE)
        );
        self.sep = '&';
        self
    }

    pub fn option_if(self, name: &str, value: Option<&str>) -> Self {
        match value {
            Some(v) => self.option(name, v),
            None => self,
        }
    }

    pub fn finish(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: UrlRules = UrlRules {
        schemes: &["x", "y"],
        form: "x://bucket/prefix",
        options: &["endpoint", "pin"],
        repeatable: &["pin"],
        credentials: "use the environment",
        public_user: false,
    };

    fn refused(s: &str) -> String {
        let e = StoreUrl::parse(s, RULES)
            .and_then(|u| u.options().and(u.prefix()).and(u.name("bucket")))
            .expect_err(s);
        e.to_string()
    }

    #[test]
    fn accepts_and_normalises() {
        let u =
            StoreUrl::parse("y://b/a//c/?endpoint=http://h:1/&pin=1&pin=2", RULES).expect("parse");
        assert_eq!(u.name("bucket").expect("name"), "b");
        assert_eq!(u.prefix().expect("prefix"), "a/c");
        let opts = u.options().expect("options");
        assert_eq!(opts.len(), 3);
        assert_eq!(endpoint(&opts[0].1).expect("endpoint"), "http://h:1");
        assert_eq!(
            StoreUrl::parse("x://b", RULES)
                .expect("p")
                .prefix()
                .expect("p"),
            ""
        );
    }

    #[test]
    fn refusals_name_the_problem() {
        for (url, says) in [
            ("z://b/p", "handles x://, y:// URLs"),
            ("x://u:secret@b/p", "credentials"),
            ("x://b/p#f", "fragment"),
            ("x://b/a/../p", "'..'"),
            ("x://b/a/%2E/p", "'.'"),
            ("x://b/p?region=1", "unknown option \"region\""),
            ("x://b/p?endpoint=a&endpoint=b", "more than once"),
            ("x://b:9/p", "no port"),
            ("x:///p", "no bucket"),
            ("x://b/a%00", "control character"),
        ] {
            let e = refused(url);
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(endpoint("https://h/p/").expect("ok"), "https://h/p");
        for bad in [
            "ftp://h",
            "h:9000",
            "http://u:p@h",
            "http://h/?q=1",
            "http://h/#f",
        ] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact("s3://k:s@b/p?x=1", &[], false),
            "s3://***:***@b/p?x=***"
        );
        assert_eq!(redact("s3://k@b/p", &[], false), "s3://***@b/p");
        assert_eq!(redact("abs://acct:k@c/p", &[], true), "abs://acct:***@c/p");
        assert_eq!(
            redact("s3://b/p?region=r&token=abc#f", &["region"], false),
            "s3://b/p?region=r&token=***#f"
        );
        assert_eq!(redact("garbage", &[], false), "garbage");
    }

    #[test]
    fn text_round_trips() {
        let s = UrlText::new("s3://b")
            .path("a b/c")
            .option("endpoint", "http://h:1")
            .option_if("region", None)
            .option("k", "a&b")
            .finish();
        assert_eq!(s, "s3://b/a%20b/c?endpoint=http://h:1&k=a%26b");
    }
}
