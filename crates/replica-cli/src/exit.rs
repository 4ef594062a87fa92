//! Which failures are the user's input (exit 2) and which are runtime failures (1).

use std::fmt;

/// A usage or configuration error: the command line or a URL is wrong.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

pub fn code_of(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.is::<UsageError>()) {
        return 2;
    }
    if let Some(replica_core::error::StoreError::InvalidUrl { .. }) =
        e.downcast_ref::<replica_core::error::StoreError>()
    {
        return 2;
    }
    1
}

/// The error and its causes on one line. Library errors often repeat their source in
/// their own message; a cause already stated is not printed again.
pub fn render(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        // "Error code 14: unable to open …" restates "unable to open …".
        let gist = c.split_once(": ").map_or(c.as_str(), |(_, rest)| rest);
        if !out.contains(&c) && !out.contains(gist) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}
