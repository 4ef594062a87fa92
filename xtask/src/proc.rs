//! Child processes and signals, for every xtask command that runs something in the
//! background: the emulators (daemons that outlive us, known by pid file), and the
//! benchmark's and soak's children (a [`Proc`] each, killed when dropped, so an error
//! or a panic never leaves one running).

use std::fs::{self, File};
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

// ---------------------------------------------------------------------------
// our own Ctrl-C

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Makes SIGINT and SIGTERM set a flag (see [`interrupted`]) instead of killing us, so
/// that the command can stop its children and report.
pub fn catch_interrupts() -> Result<()> {
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, &INTERRUPTED).context("installing signal handlers")?;
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived since [`catch_interrupts`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails once we have been interrupted.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps for `d` in short slices, returning early if we are interrupted.
pub fn pause(d: Duration) {
    let end = Instant::now() + d;
    while !interrupted() {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Sleeps for `d`, failing promptly if we are interrupted.
pub fn sleep(d: Duration) -> Result<()> {
    check_interrupted()?;
    pause(d);
    check_interrupted()
}

// ---------------------------------------------------------------------------
// signals and pids

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Int,
    Term,
    Kill,
}

impl Signal {
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Int => libc::SIGINT,
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
            Signal::Kill => "SIGKILL",
        }
    }
}

/// kill(2) of one process (`None`: only check that it exists and is ours to signal).
fn kill(pid: u32, sig: Option<Signal>) -> io::Result<()> {
    // 0 and anything above i32::MAX would name a process group, not a process.
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("bad pid {pid}")))?;
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is positive, so it
    // names one process.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(pid, sig.map_or(0, Signal::raw)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends `sig` to `pid`.
pub fn send(pid: u32, sig: Signal) -> io::Result<()> {
    kill(pid, Some(sig))
}

fn has_procfs() -> bool {
    Path::new("/proc/self/stat").exists()
}

/// Whether `pid` is a live process (a zombie counts as dead).
pub fn alive(pid: u32) -> bool {
    if has_procfs() {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // "pid (comm) S ...": the state follows the last ')'.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        !matches!(state, Some('Z' | 'X') | None)
    } else {
        kill(pid, None).is_ok()
    }
}

/// Whether `pid` is alive and its command line contains `needle` (guards against a
/// stale pid file naming a reused pid). Without procfs the pid is trusted.
pub fn is_running(pid: u32, needle: &str) -> bool {
    if !alive(pid) {
        return false;
    }
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(raw) => String::from_utf8_lossy(&raw).contains(needle),
        Err(_) => !has_procfs(),
    }
}

/// Waits up to `timeout` for `pid` to die; returns whether it did.
pub fn wait_dead(pid: u32, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if !alive(pid) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
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

/// The last `n` lines of a log file (lossy UTF-8; empty if unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------
// owned children

/// Where a child's output goes.
#[derive(Debug, Clone, Copy)]
enum Output {
    /// stdout and stderr appended to the log.
    Append,
    /// stderr appended to the log; stdout as the caller set it.
    StderrOnly,
    /// stdout and stderr in a fresh log, and the child in its own process group, so a
    /// Ctrl-C at the terminal reaches only us and we stop the child in order.
    OwnGroup,
}

/// A child process with its output in a log file; killed when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Proc> {
        Self::start(name, cmd, log, Output::Append)
    }

    /// As [`Proc::spawn`], but leaves stdout as configured by the caller.
    pub fn spawn_with_stdout(name: &str, cmd: &mut Command, log: &Path) -> Result<Proc> {
        Self::start(name, cmd, log, Output::StderrOnly)
    }

    /// Starts `cmd` in its own process group with stdout and stderr in `log`
    /// (truncated first).
    pub fn spawn_own_group(name: &str, cmd: &mut Command, log: &Path) -> Result<Proc> {
        Self::start(name, cmd, log, Output::OwnGroup)
    }

    fn start(name: &str, cmd: &mut Command, log: &Path, output: Output) -> Result<Proc> {
        let mut opts = File::options();
        match output {
            Output::OwnGroup => opts.write(true).create(true).truncate(true),
            Output::Append | Output::StderrOnly => opts.create(true).append(true),
        };
        let f = opts
            .open(log)
            .with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null());
        match output {
            Output::StderrOnly => {
                cmd.stderr(f);
            }
            Output::Append | Output::OwnGroup => {
                let out = f
                    .try_clone()
                    .with_context(|| format!("duplicating {}", log.display()))?;
                cmd.stdout(out).stderr(f);
            }
        }
        if let Output::OwnGroup = output {
            cmd.process_group(0);
        }
        let child = cmd.spawn().with_context(|| {
            format!("starting {name} ({})", cmd.get_program().to_string_lossy())
        })?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            status: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far (lossy UTF-8; empty if unreadable).
    pub fn log_text(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
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

    /// Fails (with the log's tail) if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(st) = self.try_status()? {
            bail!(
                "{} exited unexpectedly ({st}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(25)
            );
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit on its own; `None` if it did not.
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

    /// Waits for the process to exit on its own; fails after `timeout` or on an
    /// interrupt.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status()? {
                return Ok(st);
            }
            if Instant::now() > end {
                bail!(
                    "{} did not finish within {}s; last lines of {}:\n{}",
                    self.name,
                    timeout.as_secs(),
                    self.log.display(),
                    self.log_tail(25)
                );
            }
            sleep(Duration::from_millis(10))?;
        }
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
        send(self.pid(), sig).with_context(|| format!("{}: sending {}", self.name, sig.name()))
    }

    /// Sends `sig` and waits up to `timeout`; past it, SIGKILLs and fails.
    pub fn stop(&mut self, sig: Signal, timeout: Duration) -> Result<ExitStatus> {
        self.signal(sig)?;
        if let Some(st) = self.wait_timeout(timeout)? {
            return Ok(st);
        }
        let _ = self.kill();
        bail!(
            "{} did not exit within {timeout:?} after {} (killed); log: {}",
            self.name,
            sig.name(),
            self.log.display()
        )
    }

    /// Sends `sig` (unless it already exited) and waits up to `grace`; past it,
    /// SIGKILLs it with a warning and returns that status.
    pub fn stop_or_kill(&mut self, sig: Signal, grace: Duration) -> Result<ExitStatus> {
        if let Some(st) = self.try_status()? {
            return Ok(st);
        }
        let _ = send(self.pid(), sig);
        if let Some(st) = self.wait_timeout(grace)? {
            return Ok(st);
        }
        eprintln!(
            "xtask: {} ignored {} for {}s; killing it",
            self.name,
            sig.name(),
            grace.as_secs()
        );
        self.kill()
    }

    /// SIGKILLs the child if it still runs, and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(st) = self.try_status()? {
            return Ok(st);
        }
        let _ = self.child.kill();
        let st = self
            .child
            .wait()
            .with_context(|| format!("{}: waiting", self.name))?;
        self.status = Some(st);
        Ok(st)
    }

    /// User + system CPU seconds so far (the process itself, not its children).
    pub fn cpu_seconds(&self) -> Result<f64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .with_context(|| format!("reading /proc/{}/stat of {}", self.pid(), self.name))?;
        // "pid (comm) S f4 ..."; utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| -> Result<f64> {
            fields
                .get(i - 3)
                .and_then(|v| v.parse::<f64>().ok())
                .with_context(|| format!("parsing /proc/{}/stat", self.pid()))
        };
        Ok((field(14)? + field(15)?) / clk_tck())
    }

    /// Peak resident set size in bytes (VmHWM).
    pub fn peak_rss(&self) -> Result<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .with_context(|| format!("reading /proc/{}/status of {}", self.pid(), self.name))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .with_context(|| format!("no VmHWM in /proc/{}/status", self.pid()))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Clock ticks per second for `/proc/<pid>/stat` times.
fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Runs `cmd` to completion (interrupt-aware), capturing stdout in `<log>.out` and
/// returning it; fails on a non-zero exit with the log's tail.
pub fn run_output(name: &str, cmd: &mut Command, log: &Path, timeout: Duration) -> Result<String> {
    let out = log.with_extension("out");
    let f = File::create(&out).with_context(|| format!("creating {}", out.display()))?;
    cmd.stdout(f);
    let mut p = Proc::spawn_with_stdout(name, cmd, log)?;
    let st = p.wait(timeout)?;
    if !st.success() {
        bail!(
            "{name} failed ({st}); last lines of {}:\n{}",
            log.display(),
            p.log_tail(25)
        );
    }
    fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory removed on drop (xtask has no tempfile dependency).
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A fresh directory and the path of a log file in it.
    fn log(name: &str) -> (Scratch, PathBuf) {
        let dir = std::env::temp_dir().join(format!("xtask-proc-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("child.log");
        (Scratch(dir), path)
    }

    #[test]
    fn exit_status_and_log_are_reported() {
        let (_d, path) = log("exit");
        let mut p = Proc::spawn(
            "sh",
            Command::new("sh").args(["-c", "echo one; echo two >&2; exit 3"]),
            &path,
        )
        .unwrap();
        let st = p.wait(Duration::from_secs(10)).unwrap();
        assert_eq!(st.code(), Some(3));
        assert_eq!(describe(st), "exit code 3");
        assert_eq!(p.log_tail(1), "two");
        assert!(p.ensure_running().is_err());
    }

    #[test]
    fn stop_or_kill_kills_a_child_that_ignores_the_signal() {
        let (_d, path) = log("ignore");
        let mut p = Proc::spawn_own_group(
            "stubborn",
            Command::new("sh").args(["-c", "trap '' INT; echo up; exec sleep 30"]),
            &path,
        )
        .unwrap();
        while !p.log_text().contains("up") {
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid = p.pid();
        assert!(alive(pid));
        let st = p
            .stop_or_kill(Signal::Int, Duration::from_millis(300))
            .unwrap();
        assert_eq!(st.signal(), Some(libc::SIGKILL));
        assert!(wait_dead(pid, Duration::from_secs(5)));
    }

    #[test]
    fn stop_fails_only_when_it_had_to_kill() {
        let (_d, path) = log("stop");
        let mut p =
            Proc::spawn_own_group("sleeper", Command::new("sleep").arg("30"), &path).unwrap();
        let st = p.stop(Signal::Term, Duration::from_secs(10)).unwrap();
        assert_eq!(describe(st), "signal 15 (SIGTERM)");
        assert!(p.signal(Signal::Term).is_err(), "signal after reaping");
    }

    #[test]
    fn a_dropped_child_is_killed() {
        let (_d, path) = log("drop");
        let p = Proc::spawn("sleeper", Command::new("sleep").arg("30"), &path).unwrap();
        let pid = p.pid();
        drop(p);
        assert!(!alive(pid));
        assert!(!is_running(pid, "sleep"));
        assert!(send(0, Signal::Term).is_err(), "pid 0 is a process group");
    }
}
