//! Object names, validated once: every backend receives a [`Key`] (or, to list, a
//! [`KeyPrefix`]) that already obeys one rule set, so no backend re-checks and no two
//! backends disagree about what a key may be.
//!
//! The rules are those a file system can hold without surprises (object_store's `Path`
//! rules, plus one of our own): `/`-separated segments, none empty, none `.` or `..`,
//! none starting with `.` (file-like backends write their temporary files under hidden
//! names, which must never collide with a key or be listed), no `\`, no control
//! characters, no leading `/`, at most [`MAX_KEY_LEN`] bytes (S3's and Azure's limit).
//! Spaces, `+ % = & ? # ~` and non-ASCII are fine.

use std::fmt;
use std::ops::Deref;

use crate::error::StoreError;

/// The longest key in bytes that every supported store accepts.
pub const MAX_KEY_LEN: usize = 1024;

/// A valid object name relative to the replica root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

/// A valid listing prefix: empty, or the leading part of some valid key (whole segments
/// must be valid; the last, possibly partial, one must not start with `.`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct KeyPrefix(String);

impl Key {
    pub fn new(key: impl Into<String>) -> Result<Self, StoreError> {
        let key = key.into();
        match key_problem(&key) {
            None => Ok(Key(key)),
            Some(reason) => Err(StoreError::InvalidKey { key, reason }),
        }
    }

    /// A key written into the program, such as a marker object's name.
    ///
    /// # Panics
    /// If `key` breaks the rules: that is a bug in the program, not bad input.
    pub fn from_static(key: &'static str) -> Self {
        if let Some(reason) = key_problem(key) {
            panic!("invalid constant key {key:?}: {reason}");
        }
        Key(key.to_owned())
    }

    /// A key built by the layout from parts that cannot break the rules.
    pub(crate) fn from_layout(key: String) -> Self {
        debug_assert_eq!(key_problem(&key), None, "{key}");
        Key(key)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl KeyPrefix {
    pub fn new(prefix: impl Into<String>) -> Result<Self, StoreError> {
        let prefix = prefix.into();
        match prefix_problem(&prefix) {
            None => Ok(KeyPrefix(prefix)),
            Some(reason) => Err(StoreError::InvalidKey {
                key: prefix,
                reason,
            }),
        }
    }

    pub(crate) fn from_layout(prefix: String) -> Self {
        debug_assert_eq!(prefix_problem(&prefix), None, "{prefix}");
        KeyPrefix(prefix)
    }

    /// The empty prefix: everything below the replica root.
    pub fn root() -> Self {
        KeyPrefix(String::new())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Key {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Deref for KeyPrefix {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Key {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Key {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

fn segment_problem(seg: &str) -> Option<&'static str> {
    if seg.is_empty() {
        Some("it has an empty path segment ('//' or a trailing '/')")
    } else if seg == "." || seg == ".." {
        Some("'.' and '..' segments are not allowed")
    } else if seg.starts_with('.') {
        Some("segments starting with '.' are reserved for temporary files")
    } else {
        None
    }
}

fn char_problem(s: &str) -> Option<&'static str> {
    if s.len() > MAX_KEY_LEN {
        Some("it is longer than 1024 bytes")
    } else if s.starts_with('/') {
        Some("it is absolute; keys are relative to the replica root")
    } else if s.contains('\\') {
        Some("backslashes are not allowed; keys use '/'")
    } else if s.chars().any(char::is_control) {
        Some("control characters are not allowed")
    } else {
        None
    }
}

fn key_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        return Some("it is empty");
    }
    char_problem(key).or_else(|| key.split('/').find_map(segment_problem))
}

fn prefix_problem(prefix: &str) -> Option<&'static str> {
    char_problem(prefix).or_else(|| {
        let (dirs, partial) = match prefix.rsplit_once('/') {
            Some((dirs, partial)) => (Some(dirs), partial),
            None => (None, prefix),
        };
        dirs.and_then(|d| d.split('/').find_map(segment_problem))
            .or_else(|| {
                partial
                    .starts_with('.')
                    .then_some("segments starting with '.' are reserved for temporary files")
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_and_escaped_keys() {
        for k in [
            "ltx/0/0000000000000001-0000000000000001.ltx",
            "0009/a",
            "a+b/c d",
            "percent%20literal",
            "hash#tag",
            "ünïcödé/ü",
            "emoji/🦀",
            "tilde~/x",
            "a.b/c.",
        ] {
            assert_eq!(Key::new(k).expect(k).as_str(), k);
        }
    }

    #[test]
    fn refuses_by_name_with_a_reason() {
        for k in [
            "",
            "/abs",
            "a//b",
            "a/",
            ".hidden",
            "a/.tmp",
            "a/../b",
            "..",
            ".",
            "a\\b",
            "nul\0",
            "tab\tx",
            &"x".repeat(1025),
        ] {
            match Key::new(k) {
                Err(StoreError::InvalidKey { key, reason }) => {
                    assert_eq!(key, k);
                    assert!(!reason.is_empty());
                }
                other => panic!("{k:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn prefixes() {
        for p in ["", "ltx/", "ltx/0/", "0009/", "p", "a b/c"] {
            assert_eq!(KeyPrefix::new(p).expect(p).as_str(), p);
        }
        for p in ["/", "../", "a/../", "a//", ".x", "a/.tmp", "a\\"] {
            assert!(
                matches!(KeyPrefix::new(p), Err(StoreError::InvalidKey { .. })),
                "{p:?}"
            );
        }
    }
}
