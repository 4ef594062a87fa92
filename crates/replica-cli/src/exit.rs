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

/// The error and its causes on one line, `error: cause: cause`. Each error states
/// only its own level and leaves its cause to `source()`, so each is printed once.
pub fn render(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        out.push_str(": ");
        out.push_str(&cause.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    /// A library error in the house style: its message, and its cause as `source()`.
    #[derive(Debug)]
    struct Read(std::io::Error);

    impl fmt::Display for Read {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot read config file /etc/replica.yml")
        }
    }

    impl std::error::Error for Read {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn render_prints_each_level_once_in_order() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let e = Err::<(), _>(Read(io))
            .context("cannot start replication")
            .expect_err("an error");
        assert_eq!(
            render(&e),
            "cannot start replication: cannot read config file /etc/replica.yml: No such file or directory"
        );
    }

    #[test]
    fn render_keeps_a_cause_that_looks_like_an_earlier_one() {
        // No de-duplication by text: two levels that happen to read alike are two levels.
        let e = anyhow::Error::new(std::io::Error::other("disk full"))
            .context("disk full")
            .context("flush failed");
        assert_eq!(render(&e), "flush failed: disk full: disk full");
    }
}
