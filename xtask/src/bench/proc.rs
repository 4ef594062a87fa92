//! Child processes the bench starts (replicators, writers, the emulator), with
//! accounting from /proc. Every child is killed when its handle is dropped, so an
//! error anywhere in a scenario leaves nothing running.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Set by SIGINT/SIGTERM; every wait in the bench checks it.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d` in short slices, failing promptly on an interrupt.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Sends `sig` (e.g. "INT", "KILL") with kill(1): the workspace forbids unsafe code,
/// and this is not on any measured path.
pub fn send_signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
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

#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
    done: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Proc> {
        let f = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f);
        let child = cmd.spawn().with_context(|| {
            format!("starting {name} ({})", cmd.get_program().to_string_lossy())
        })?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            done: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log, 25)
    }

    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.done.is_none() {
            self.done = self.child.try_wait()?;
        }
        Ok(self.done)
    }

    /// Fails (with the log's tail) if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(st) = self.try_wait()? {
            bail!(
                "{} exited unexpectedly ({st}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Waits for the process to exit on its own.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > end {
                bail!(
                    "{} did not finish within {}s; last lines of {}:\n{}",
                    self.name,
                    timeout.as_secs(),
                    self.log.display(),
                    self.log_tail()
                );
            }
            sleep(Duration::from_millis(10))?;
        }
    }

    /// SIGINT (both tools flush and exit), then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(st) = self.try_wait()? {
            return Ok(st);
        }
        send_signal(self.pid(), "INT");
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if let Some(st) = self.try_wait()? {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "xtask bench: {} ignored SIGINT for {}s; killing it",
            self.name,
            grace.as_secs()
        );
        self.kill()
    }

    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(st) = self.try_wait()? {
            return Ok(st);
        }
        let _ = self.child.kill();
        let st = self.child.wait()?;
        self.done = Some(st);
        Ok(st)
    }

    /// User + system CPU seconds so far (the process itself; neither tool forks).
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
        if self.done.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `cmd` to completion (interrupt-aware), capturing stdout; fails on a non-zero
/// exit with stderr's tail.
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
            p.log_tail()
        );
    }
    fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))
}

impl Proc {
    /// As [`Proc::spawn`], but leaves stdout as configured by the caller.
    pub fn spawn_with_stdout(name: &str, cmd: &mut Command, log: &Path) -> Result<Proc> {
        let f = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null()).stderr(f);
        let child = cmd.spawn().with_context(|| {
            format!("starting {name} ({})", cmd.get_program().to_string_lossy())
        })?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            done: None,
        })
    }
}
