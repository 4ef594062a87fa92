//! The soak's child processes, and its own Ctrl-C.
//!
//! Children run in their own process groups, so a Ctrl-C at the terminal reaches only
//! the soak, which then stops them in order (writer, then replicator) and prints what it
//! has. Every `Proc` is killed when dropped, so an error or a panic never leaves a
//! replicator or writer behind.

use std::fs::File;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set a flag (see [`interrupted`]) instead of killing us, so
/// the soak can stop its children and report.
pub fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe;
        // `signal` has no other preconditions.
        #[allow(unsafe_code)]
        unsafe {
            libc::signal(sig, on_interrupt as *const () as libc::sighandler_t);
        }
    }
}

/// Whether SIGINT or SIGTERM arrived since [`catch_interrupts`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Sleeps for `d`, waking early if we are interrupted.
pub fn sleep(d: Duration) {
    let end = Instant::now() + d;
    while !interrupted() {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
}

impl Signal {
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "SIGTERM",
            Signal::Kill => "SIGKILL",
        }
    }
}

/// A long-running child with its stdout and stderr in one log file.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("duplicating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd.spawn().with_context(|| {
            format!("starting {name} ({})", cmd.get_program().to_string_lossy())
        })?;
        Ok(Proc {
            name: name.to_string(),
            child,
            status: None,
            log: log.to_path_buf(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The exit status, if it has exited (never blocks).
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("{}: waiting", self.name))?;
        }
        Ok(self.status)
    }

    /// Sends `sig`; refused once the child has been reaped, as its pid may be reused.
    pub fn signal(&mut self, sig: Signal) -> Result<()> {
        if let Some(st) = self.try_status()? {
            bail!(
                "{}: cannot send {}: it already exited ({st})",
                self.name,
                sig.name()
            );
        }
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill(2) has no memory-safety preconditions, and `pid` is our child,
        // not yet reaped (checked above), so it names no other process.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(pid, sig.raw()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("{}: sending {}", self.name, sig.name()));
        }
        Ok(())
    }

    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status()? {
                return Ok(Some(st));
            }
            if Instant::now() >= end {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` and waits up to `timeout`; past it, SIGKILLs and fails.
    pub fn stop(&mut self, sig: Signal, timeout: Duration) -> Result<ExitStatus> {
        self.signal(sig)?;
        if let Some(st) = self.wait_timeout(timeout)? {
            return Ok(st);
        }
        self.kill();
        bail!(
            "{} did not exit within {timeout:?} after {} (killed); log: {}",
            self.name,
            sig.name(),
            self.log.display()
        )
    }

    /// SIGKILLs the child if it still runs, and reaps it.
    pub fn kill(&mut self) {
        if matches!(self.try_status(), Ok(None)) {
            let _ = self.child.kill();
        }
        if let Ok(st) = self.child.wait() {
            self.status = Some(st);
        }
    }

    /// The log so far (lossy UTF-8; empty if unreadable).
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// "exit code 3" or "signal 9 (SIGKILL)", for messages.
pub fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(9)) => "signal 9 (SIGKILL)".into(),
        (None, Some(15)) => "signal 15 (SIGTERM)".into(),
        (None, Some(s)) => format!("signal {s}"),
        _ => st.to_string(),
    }
}
