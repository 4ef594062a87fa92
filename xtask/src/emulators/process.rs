//! Starting, stopping and finding the emulators: plain background processes known by
//! the pid and port files in `<state>/`, checked against `/proc/<pid>/cmdline` so that
//! a stale pid file never makes us signal an unrelated process.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use super::{Dirs, HOST, Kind, probe, read_num};
use crate::proc::{self, Signal};
use crate::util;

/// How long a SIGTERMed emulator gets before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Stopped,
    Running { pid: u32, port: u16, ready: bool },
}

pub(super) fn status(d: &Dirs, k: Kind) -> Status {
    let Some(pid) = read_num::<u32>(&d.pid_file(k)) else {
        return Status::Stopped;
    };
    if !proc::is_running(pid, k.cmdline_needle()) {
        return Status::Stopped;
    }
    let port = read_num::<u16>(&d.port_file(k))
        .or_else(|| k.port().ok())
        .unwrap_or(k.default_port());
    Status::Running {
        pid,
        port,
        ready: k.ready(port),
    }
}

pub(super) fn forget(d: &Dirs, k: Kind) -> Result<()> {
    super::remove_if_exists(&d.pid_file(k))?;
    super::remove_if_exists(&d.port_file(k))?;
    super::remove_if_exists(&d.session_file(k))
}

/// Stops emulator `k` if it runs; returns its pid if it did.
pub(super) fn stop(d: &Dirs, k: Kind) -> Result<Option<u32>> {
    let Some(pid) = read_num::<u32>(&d.pid_file(k)) else {
        forget(d, k)?;
        return Ok(None);
    };
    if !proc::is_running(pid, k.cmdline_needle()) {
        forget(d, k)?;
        return Ok(None);
    }
    let _ = proc::send(pid, Signal::Term);
    if !proc::wait_dead(pid, STOP_TIMEOUT) {
        eprintln!(
            "xtask: {} (pid {pid}) ignored SIGTERM for {}s; sending SIGKILL",
            k.name(),
            STOP_TIMEOUT.as_secs()
        );
        let _ = proc::send(pid, Signal::Kill);
        if !proc::wait_dead(pid, Duration::from_secs(5)) {
            bail!("{} (pid {pid}) survives SIGKILL", k.name());
        }
    }
    forget(d, k)?;
    Ok(Some(pid))
}

/// Starts emulator `k` on `port` and waits until it answers. `detach` puts it
/// in its own process group, so a Ctrl-C in the terminal that ran `up` does
/// not reach it.
pub(super) fn start(d: &Dirs, k: Kind, port: u16, detach: bool) -> Result<u32> {
    if probe::port_in_use(port) {
        bail!(
            "{HOST}:{port} is already in use by a process xtask did not start; \
             stop it, or pick another port with {}=PORT",
            k.port_env()
        );
    }
    let mut cmd = k.command(d, port)?;
    let log_path = d.log_file(k);
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .current_dir(&d.state);
    if detach {
        cmd.process_group(0);
    }
    util::step(&format!(
        "starting {} ({}) on port {port}",
        k.name(),
        k.program()
    ));
    eprintln!("$ {}", util::display(&cmd));
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", cmd.get_program().to_string_lossy()))?;
    let pid = child.id();
    fs::write(d.pid_file(k), format!("{pid}\n"))?;
    fs::write(d.port_file(k), format!("{port}\n"))?;
    loop {
        if let Some(st) = child.try_wait()? {
            forget(d, k)?;
            bail!(
                "{} exited ({st}) before it answered on {HOST}:{port}; last lines of {}:\n{}",
                k.program(),
                log_path.display(),
                last_lines(&log_path)
            );
        }
        if k.ready(port) {
            eprintln!(
                "xtask: {} ready on {} in {:.2}s (pid {pid}, log {})",
                k.name(),
                k.endpoint(port),
                t0.elapsed().as_secs_f64(),
                log_path.display()
            );
            return Ok(pid);
        }
        if t0.elapsed() > k.ready_timeout() {
            let _ = child.kill();
            let _ = child.wait();
            forget(d, k)?;
            bail!(
                "{} did not answer on {HOST}:{port} within {}s; last lines of {}:\n{}",
                k.program(),
                k.ready_timeout().as_secs(),
                log_path.display(),
                last_lines(&log_path)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes `k` run and answer on its configured port; returns whether it was
/// started (false: reused).
pub(super) fn ensure_up(d: &Dirs, k: Kind, detach: bool) -> Result<bool> {
    let port = k.port()?;
    match status(d, k) {
        Status::Running {
            pid,
            port: p,
            ready: true,
        } if p == port => {
            eprintln!(
                "xtask: {} already running on {} (pid {pid}); reusing it",
                k.name(),
                k.endpoint(port)
            );
            return Ok(false);
        }
        Status::Running { pid, port: p, .. } => {
            let why = if p != port {
                format!("listens on port {p}, not {port}")
            } else {
                format!("does not answer on port {p}")
            };
            if p != port && probe::port_in_use(port) {
                bail!(
                    "{} runs on port {p} (pid {pid}), and the requested port {port} is in use; \
                     stop whatever listens there, or unset {}",
                    k.name(),
                    k.port_env()
                );
            }
            eprintln!("xtask: {} (pid {pid}) {why}; restarting it", k.name());
            stop(d, k)?;
        }
        Status::Stopped => forget(d, k)?,
    }
    start(d, k, port, detach).map(|_| true)
}

pub(super) fn combine(errors: Vec<(Kind, anyhow::Error)>) -> anyhow::Error {
    let mut msg = String::new();
    for (k, e) in &errors {
        msg.push_str(&format!("\n  {}: {e:#}", k.name()));
    }
    anyhow!("{} emulator(s) failed to start:{msg}", errors.len())
}

/// Brings `kinds` up, trying each even if an earlier one fails.
pub(super) fn bring_up(
    d: &Dirs,
    kinds: &[Kind],
    detach: bool,
) -> (Vec<Kind>, Vec<(Kind, anyhow::Error)>) {
    let mut started = Vec::new();
    let mut errors = Vec::new();
    for &k in kinds {
        match ensure_up(d, k, detach) {
            Ok(true) => started.push(k),
            Ok(false) => {}
            Err(e) => errors.push((k, e)),
        }
    }
    (started, errors)
}

/// The end of an emulator's log, indented for an error message.
fn last_lines(path: &Path) -> String {
    if let Err(e) = fs::metadata(path) {
        return format!("    (cannot read it: {e})");
    }
    let tail = proc::tail(path, 30);
    if tail.trim().is_empty() {
        "    (empty)".to_string()
    } else {
        tail.lines()
            .map(|l| format!("    | {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
