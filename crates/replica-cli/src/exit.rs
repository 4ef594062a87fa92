//! Which failures are the user's input (exit 2) and which are runtime failures (1).

use std::fmt;

use replica::DeployError;
use replica_core::error::StoreError;

/// A usage or configuration error found after argument parsing.
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

/// Exit code 2 for the user's input: a bad replica URL (unknown scheme, refused
/// option), a bad config file, a changed shard count, an inconsistent command line
/// (clap reports bad flags itself with 2). Everything else that fails at run time is 1.
pub fn code_of(e: &anyhow::Error) -> u8 {
    let config = e.chain().any(|c| {
        c.is::<UsageError>()
            || matches!(
                c.downcast_ref::<StoreError>(),
                Some(StoreError::InvalidUrl { .. })
            )
            || c.downcast_ref::<DeployError>()
                .is_some_and(DeployError::is_config)
            || c.downcast_ref::<replica_core::engine::EngineError>()
                .is_some_and(replica_core::engine::EngineError::is_config)
    });
    if config { 2 } else { 1 }
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
