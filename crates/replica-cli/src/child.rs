//! The service run by `replicate --exec`: started after replication, sent the signals
//! `replica` receives, and waited for.

use std::process::ExitStatus;

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::exit::usage;

pub fn spawn(cmdline: &str) -> anyhow::Result<Child> {
    let words =
        shell_words::split(cmdline).map_err(|e| usage(format!("--exec {cmdline:?}: {e}")))?;
    let Some((program, args)) = words.split_first() else {
        return Err(usage("--exec needs a command"));
    };
    let child = Command::new(program)
        .args(args)
        .kill_on_drop(false)
        .spawn()
        .with_context(|| format!("cannot start --exec command {program:?}"))?;
    // The program only: its arguments may carry a secret.
    tracing::info!(program, pid = child.id(), "service started");
    Ok(child)
}

/// Sends `sig` to the child, if it is still running.
pub fn signal(child: &Child, sig: i32) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) with a pid we own and a valid signal number has no memory
        // effects; the worst outcome of a race with the child's exit is ESRCH.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(pid, sig) };
        if rc != 0 {
            tracing::debug!(pid, sig, "signal not delivered: the child has exited");
        }
    }
}

/// The exit code `replica` passes on: the child's code, or 128 + the signal that
/// killed it, as a shell reports it.
pub fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(1),
        (None, Some(s)) => u8::try_from(128 + s).unwrap_or(1),
        _ => 1,
    };
    match status.signal() {
        Some(sig) => tracing::info!(signal = sig, code, "service exited"),
        None => tracing::info!(code, "service exited"),
    }
    code
}
