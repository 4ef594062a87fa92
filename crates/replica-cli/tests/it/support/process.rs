//! Child processes: long-running ones ([`Proc`], stopped by signals) and commands run
//! to completion ([`run`]).

use std::fmt;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A signal to send to a [`Proc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Int,
    Term,
    Kill,
    Stop,
    Cont,
}

impl Signal {
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Int => libc::SIGINT,
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Stop => libc::SIGSTOP,
            Signal::Cont => libc::SIGCONT,
        }
    }
}

pub const SIGINT: Signal = Signal::Int;
pub const SIGTERM: Signal = Signal::Term;
pub const SIGKILL: Signal = Signal::Kill;
pub const SIGSTOP: Signal = Signal::Stop;
pub const SIGCONT: Signal = Signal::Cont;

/// A long-running child (`replica replicate`, `litestream replicate`, ...).
///
/// stdout and stderr go to files in a private temp dir (read them with
/// [`Proc::stdout`] / [`Proc::stderr`]). On drop the process is killed if it
/// still runs, and if the test is panicking its output is printed.
pub struct Proc {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    _logs: tempfile::TempDir,
}

impl fmt::Debug for Proc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proc")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("status", &self.status)
            .field("stderr", &self.stderr_path)
            .finish()
    }
}

impl Proc {
    /// Spawns `cmd` (stdin closed, stdout/stderr captured to files).
    /// `name` labels it in messages.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        let logs = tempfile::Builder::new()
            .prefix("replica-test-proc-")
            .tempdir()
            .expect("creating a log dir");
        let stdout_path = logs.path().join("stdout.log");
        let stderr_path = logs.path().join("stderr.log");
        let stdout = File::create(&stdout_path).expect("creating stdout log");
        let stderr = File::create(&stderr_path).expect("creating stderr log");
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name} ({:?}): {e}", cmd.get_program()));
        Proc {
            name: name.to_string(),
            child,
            status: None,
            stdout_path,
            stderr_path,
            _logs: logs,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends `sig`. Panics if the process has already been reaped (its pid
    /// could belong to someone else by now).
    pub fn signal(&mut self, sig: Signal) {
        assert!(
            self.try_status().is_none(),
            "{}: cannot send {sig:?}, it already exited ({:?})\n{}",
            self.name,
            self.status,
            self.output_report()
        );
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own
        // child, which has not been reaped yet (checked above), so it cannot
        // refer to an unrelated process.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(pid, sig.raw()) };
        assert_eq!(
            rc,
            0,
            "{}: kill({pid}, {sig:?}) failed: {}",
            self.name,
            std::io::Error::last_os_error()
        );
    }

    /// The exit status if the process has exited (non-blocking).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("{}: try_wait: {e}", self.name));
        }
        self.status
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` and waits up to `timeout` for the exit; panics (with the
    /// process's output) if it does not exit in time.
    #[track_caller]
    pub fn stop(&mut self, sig: Signal, timeout: Duration) -> ExitStatus {
        self.signal(sig);
        match self.wait_timeout(timeout) {
            Some(st) => st,
            None => panic!(
                "{} did not exit within {timeout:?} after {sig:?}\n{}",
                self.name,
                self.output_report()
            ),
        }
    }

    /// [`Proc::stop`] with SIGINT, which must end in exit code 0.
    #[track_caller]
    pub fn stop_ok(&mut self, timeout: Duration) {
        let st = self.stop(Signal::Int, timeout);
        assert_eq!(
            st.code(),
            Some(0),
            "{} exited with {st}\n{}",
            self.name,
            self.output_report()
        );
    }

    /// Kills the process (SIGKILL) if it still runs and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(st) = self.try_status() {
            return st;
        }
        let _ = self.child.kill();
        let st = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("{}: wait: {e}", self.name));
        self.status = Some(st);
        st
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Whether the engine has logged that it replicates: its own `replicating db=…`
    /// line, not the lease's description of a holder ("… (replicating a.db)"),
    /// which a takeover prints before replication starts.
    pub fn is_replicating(&self) -> bool {
        self.stderr()
            .lines()
            .any(|l| l.contains(" replicating db="))
    }

    /// The tail of stdout and stderr, for failure messages.
    pub fn output_report(&self) -> String {
        format!(
            "----- {} stdout (tail) -----\n{}\n----- {} stderr (tail) -----\n{}\n-----",
            self.name,
            tail(&self.stdout(), 100),
            self.name,
            tail(&self.stderr(), 200)
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let running = self.status.is_none() && matches!(self.child.try_wait(), Ok(None));
        if running {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "{} (pid {}) output, printed because the test failed:\n{}",
                self.name,
                self.child.id(),
                self.output_report()
            );
        }
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    let skip = all.len().saturating_sub(lines);
    let mut out = String::new();
    if skip > 0 {
        out.push_str(&format!("[... {skip} earlier lines ...]\n"));
    }
    out.push_str(&all[skip..].join("\n"));
    out
}

/// The result of [`run`]: exit status and output as (lossy UTF-8) strings.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "status: {}\n----- stdout -----\n{}\n----- stderr -----\n{}\n-----",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to completion (stdin closed) and returns its status and output.
/// Asserts nothing; panics only if the program cannot be started.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {:?}: {e}", cmd.get_program()));
    Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
