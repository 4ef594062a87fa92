//! Which failures are the user's input (exit 2) and which are runtime failures (1).

use replica_core::error::StoreError;

/// Exit code 2 for a bad replica URL (unknown scheme, refused option); clap reports
/// bad flags itself with 2. Everything else that fails at run time is 1.
pub fn code_of(e: &anyhow::Error) -> u8 {
    let bad_url = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<StoreError>(),
            Some(StoreError::InvalidUrl { .. })
        )
    });
    if bad_url { 2 } else { 1 }
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
