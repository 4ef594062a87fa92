//! `cargo xtask emulators up|down|status|env [NAME...]`: local stand-ins for
//! the cloud backends, run as plain background processes (no Docker).
//!
//! | name  | emulator                          | installed into (`<cache>/emulators/`)  |
//! |-------|-----------------------------------|----------------------------------------|
//! | s3    | moto server 5.2.5 (PyPI)          | `moto/venv`                            |
//! | azure | Azurite 3.35.0 (npm)              | `azurite/node_modules`                 |
//! | gcs   | fake-gcs-server (PyPI wrapper)    | `fake-gcs/venv`, `fake-gcs/bin`        |
//! | sftp  | OpenSSH sshd (Debian, apt-get)    | system; keys and config in the state dir |
//! | seaweedfs | SeaweedFS 4.48 (PyPI), S3 with SigV4 checked | `seaweedfs/venv`         |
//!
//! Pid files, ports, logs, the SFTP keys and the exported `env` file live in
//! `<cache>/emulators/state/`. `cargo xtask test` uses [`Session`] to bring
//! them up around the test run.
//!
//! One file per emulator (`s3.rs`, `azure.rs`, `gcs.rs`, `sftp.rs`: install,
//! command line, readiness probe, exported variables); `install.rs` the shared
//! installers, `process.rs` starting and stopping by pid file, `probe.rs` the
//! network probes, `session.rs` a test run's emulators.

mod azure;
mod gcs;
mod install;
mod probe;
mod process;
mod s3;
mod seaweed;
mod session;
mod sftp;

use std::fs::{self, File, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::paths;
pub use s3::moto_server;
pub use session::Session;

pub const HELP: &str = "
SUBCOMMANDS:
    up [NAME...]      install (when missing) and start the emulators, wait until
                      they answer, write <state>/env and print it (KEY=VALUE on
                      stdout; everything else goes to stderr). An emulator that
                      is already running and answering is reused.
    down [NAME...]    stop them (SIGTERM, then SIGKILL after 10 s)
    status [NAME...]  one line each: ready / running (not answering) / stopped;
                      exits 0 when all named emulators are ready, 3 otherwise
    env [NAME...]     print the KEY=VALUE lines of the ready emulators

NAME is s3 (moto), azure (Azurite), gcs (fake-gcs-server), sftp (sshd) or
seaweedfs (SeaweedFS, an S3 that checks signatures); default: all five. They listen on 127.0.0.1 only.

Installed into <cache>/emulators/ (first time: moto ~140 MB, Azurite ~186 MB,
fake-gcs-server ~60 MB; sshd comes from the Debian package openssh-server,
installed with apt-get when /usr/sbin/sshd is missing, as root or via sudo -n).
State (pid files, logs <name>.log, the SFTP keys, the env file) is in
<cache>/emulators/state/. Load the variables into a shell with
    set -a; . \"${REPLICA_CACHE_DIR:-$HOME/.cache/replica}/emulators/state/env\"; set +a

ENVIRONMENT:
    REPLICA_EMULATOR_S3_PORT      moto's port (default 19000)
    REPLICA_EMULATOR_AZURE_PORT   Azurite's blob port (default 19010)
    REPLICA_EMULATOR_GCS_PORT     fake-gcs-server's port (default 19020)
    REPLICA_EMULATOR_SFTP_PORT    sshd's port (default 19022)
    REPLICA_EMULATOR_SEAWEEDFS_PORT  SeaweedFS's S3 port (default 19030; it also
                                  uses fixed ports 8888, 9333, 18888 and others)

EXPORTED (in <state>/env, and to the tests by `cargo xtask test`):
    REPLICA_S3_ENDPOINT REPLICA_S3_REGION REPLICA_S3_ACCESS_KEY_ID
    REPLICA_S3_SECRET_ACCESS_KEY REPLICA_S3_FORCE_PATH_STYLE
    REPLICA_AZURE_ENDPOINT REPLICA_AZURE_ACCOUNT_NAME REPLICA_AZURE_ACCOUNT_KEY
    REPLICA_GCS_ENDPOINT
    REPLICA_SFTP_HOST REPLICA_SFTP_PORT REPLICA_SFTP_USER REPLICA_SFTP_KEY
    REPLICA_SFTP_ROOT (an absolute directory on the SFTP server for tests to use)
    REPLICA_SFTP_HOST_KEY (the server's public host key file)
    REPLICA_SEAWEED_ENDPOINT REPLICA_SEAWEED_BUCKET REPLICA_SEAWEED_ACCESS_KEY_ID
    REPLICA_SEAWEED_SECRET_ACCESS_KEY
";

pub(super) const HOST: &str = "127.0.0.1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    S3,
    Azure,
    Gcs,
    Sftp,
    Seaweed,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::S3, Kind::Azure, Kind::Gcs, Kind::Sftp, Kind::Seaweed];

    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::S3 => "s3",
            Kind::Azure => "azure",
            Kind::Gcs => "gcs",
            Kind::Sftp => "sftp",
            Kind::Seaweed => "seaweedfs",
        }
    }

    pub(super) fn program(self) -> &'static str {
        match self {
            Kind::S3 => "moto 5.2.5",
            Kind::Azure => "Azurite 3.35.0",
            Kind::Gcs => "fake-gcs-server",
            Kind::Sftp => "OpenSSH sshd",
            Kind::Seaweed => "SeaweedFS 4.48",
        }
    }

    pub(super) fn parse(s: &str) -> Option<Kind> {
        match s.to_ascii_lowercase().as_str() {
            "s3" | "moto" => Some(Kind::S3),
            "azure" | "azurite" | "abs" => Some(Kind::Azure),
            "gcs" | "gs" | "fake-gcs" | "fake-gcs-server" => Some(Kind::Gcs),
            "sftp" | "sshd" | "ssh" => Some(Kind::Sftp),
            "seaweedfs" | "seaweed" | "weed" => Some(Kind::Seaweed),
            _ => None,
        }
    }

    pub(super) fn port_env(self) -> &'static str {
        match self {
            Kind::S3 => "REPLICA_EMULATOR_S3_PORT",
            Kind::Azure => "REPLICA_EMULATOR_AZURE_PORT",
            Kind::Gcs => "REPLICA_EMULATOR_GCS_PORT",
            Kind::Sftp => "REPLICA_EMULATOR_SFTP_PORT",
            Kind::Seaweed => "REPLICA_EMULATOR_SEAWEEDFS_PORT",
        }
    }

    pub(super) fn default_port(self) -> u16 {
        match self {
            Kind::S3 => 19000,
            Kind::Azure => 19010,
            Kind::Gcs => 19020,
            Kind::Sftp => 19022,
            Kind::Seaweed => 19030,
        }
    }

    /// The port to start on: `$REPLICA_EMULATOR_<NAME>_PORT` or the default.
    pub(super) fn port(self) -> Result<u16> {
        match std::env::var(self.port_env()) {
            Ok(v) if !v.trim().is_empty() => v
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| anyhow!("{}={v:?} is not a TCP port", self.port_env())),
            _ => Ok(self.default_port()),
        }
    }

    /// A string in `/proc/<pid>/cmdline` that tells our process from an
    /// unrelated one that reused a stale pid.
    pub(super) fn cmdline_needle(self) -> &'static str {
        match self {
            Kind::S3 => "moto_server",
            Kind::Azure => "azurite",
            Kind::Gcs => "fake-gcs-server",
            Kind::Sftp => "sshd",
            Kind::Seaweed => "weed",
        }
    }

    pub(super) fn ready_timeout(self) -> Duration {
        match self {
            // Python imports everything and writes .pyc files on the first start.
            Kind::S3 => Duration::from_secs(90),
            Kind::Azure => Duration::from_secs(60),
            Kind::Gcs => Duration::from_secs(30),
            Kind::Sftp => Duration::from_secs(15),
            Kind::Seaweed => Duration::from_secs(30),
        }
    }

    pub(super) fn endpoint(self, port: u16) -> String {
        match self {
            Kind::S3 | Kind::Gcs | Kind::Seaweed => format!("http://{HOST}:{port}"),
            Kind::Azure => format!("http://{HOST}:{port}/{}", azure::ACCOUNT),
            Kind::Sftp => format!("sftp://{}@{HOST}:{port}", sftp::user()),
        }
    }

    /// The command that runs this emulator on `port` in the foreground, installing
    /// it first if needed.
    fn command(self, d: &Dirs, port: u16) -> Result<Command> {
        match self {
            Kind::S3 => s3::command(d, port),
            Kind::Azure => azure::command(d, port),
            Kind::Gcs => gcs::command(d, port),
            Kind::Sftp => sftp::command(d, port),
            Kind::Seaweed => seaweed::command(d, port),
        }
    }

    /// Whether this emulator on `port` answers its protocol.
    fn ready(self, port: u16) -> bool {
        match self {
            Kind::S3 => s3::ready(port),
            Kind::Azure => azure::ready(port),
            Kind::Gcs => gcs::ready(port),
            Kind::Sftp => sftp::ready(port),
            Kind::Seaweed => seaweed::ready(port),
        }
    }

    /// The `REPLICA_*` variables that point the tests at this emulator on `port`.
    fn exports(self, d: &Dirs, port: u16) -> Vec<(String, String)> {
        match self {
            Kind::S3 => s3::exports(port),
            Kind::Azure => azure::exports(port),
            Kind::Gcs => gcs::exports(port),
            Kind::Sftp => sftp::exports(d, port),
            Kind::Seaweed => seaweed::exports(port),
        }
    }
}

/// `<cache>/emulators` and its `state` subdirectory.
#[derive(Debug)]
pub(super) struct Dirs {
    root: PathBuf,
    state: PathBuf,
}

impl Dirs {
    pub(super) fn new() -> Result<Self> {
        let root = paths::cache_dir()?.join("emulators");
        let state = root.join("state");
        fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
        Ok(Dirs { root, state })
    }

    pub(super) fn file(&self, k: Kind, ext: &str) -> PathBuf {
        self.state.join(format!("{}.{ext}", k.name()))
    }
    pub(super) fn pid_file(&self, k: Kind) -> PathBuf {
        self.file(k, "pid")
    }
    pub(super) fn port_file(&self, k: Kind) -> PathBuf {
        self.file(k, "port")
    }
    pub(super) fn log_file(&self, k: Kind) -> PathBuf {
        self.file(k, "log")
    }
    /// Present while the emulator was started by a `cargo xtask test` run,
    /// which then stops it when it ends.
    pub(super) fn session_file(&self, k: Kind) -> PathBuf {
        self.file(k, "session")
    }
    pub(super) fn env_file(&self) -> PathBuf {
        self.state.join("env")
    }
    pub(super) fn sftp_dir(&self) -> PathBuf {
        self.state.join("sftp")
    }
    pub(super) fn sftp_client_key(&self) -> PathBuf {
        self.sftp_dir().join("client_ed25519")
    }
    pub(super) fn sftp_root(&self) -> PathBuf {
        self.sftp_dir().join("data")
    }

    pub(super) fn open_lock(&self, name: &str) -> Result<File> {
        let path = self.state.join(name);
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))
    }

    /// Serialises `up`/`down` (and a test run's start and end) between
    /// concurrent xtask processes.
    pub(super) fn lock(&self) -> Result<File> {
        let f = self.open_lock("lock")?;
        match f.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                eprintln!("xtask: waiting for another xtask to finish with the emulators...");
                f.lock().context("locking the emulator state")?;
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).context("locking the emulator state");
            }
        }
        Ok(f)
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn read_num<T: std::str::FromStr>(path: &Path) -> Option<T> {
    read_trimmed(path)?.parse().ok()
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Rewrites `<state>/env` with the variables of every ready emulator and
/// returns them.
fn write_env(d: &Dirs) -> Result<Vec<(String, String)>> {
    let mut vars = Vec::new();
    for k in Kind::ALL {
        if let process::Status::Running {
            port, ready: true, ..
        } = process::status(d, k)
        {
            vars.extend(k.exports(d, port));
        }
    }
    let path = d.env_file();
    if vars.is_empty() {
        remove_if_exists(&path)?;
    } else {
        let mut text = String::from(
            "# Emulator endpoints, written by `cargo xtask emulators`.\n\
             # Load with: set -a; . THIS_FILE; set +a\n",
        );
        for (k, v) in &vars {
            text.push_str(&format!("{k}={v}\n"));
        }
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(vars)
}

fn print_vars(vars: &[(String, String)]) {
    let mut out = io::stdout().lock();
    for (k, v) in vars {
        let _ = writeln!(out, "{k}={v}");
    }
}

/// `<cache>/emulators/state`, for messages.
pub fn state_dir_display() -> String {
    paths::cache_dir().map_or_else(
        |_| "<cache>/emulators/state".to_string(),
        |c| c.join("emulators").join("state").display().to_string(),
    )
}

pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

// ---------------------------------------------------------------------------
// the command

fn parse_kinds(names: &[String]) -> Result<Vec<Kind>> {
    if names.is_empty() {
        return Ok(Kind::ALL.to_vec());
    }
    let mut kinds = Vec::new();
    for n in names {
        let k = Kind::parse(n)
            .ok_or_else(|| anyhow!("unknown emulator `{n}`; expected s3, azure, gcs or sftp"))?;
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    Ok(kinds)
}

pub fn run(args: &[String]) -> Result<ExitCode> {
    let Some(sub) = args.first() else {
        bail!("expected up, down, status or env (see `cargo xtask help emulators`)");
    };
    let kinds = parse_kinds(&args[1..])?;
    let d = Dirs::new()?;
    match sub.as_str() {
        "up" => {
            for k in &kinds {
                k.port()?;
            }
            let t0 = Instant::now();
            let _guard = d.lock()?;
            let (_, errors) = process::bring_up(&d, &kinds, true);
            // Started or reused by hand: no test run may stop them.
            for &k in &kinds {
                if errors.iter().all(|(e, _)| *e != k) {
                    remove_if_exists(&d.session_file(k))?;
                }
            }
            let vars = write_env(&d)?;
            print_vars(&vars);
            eprintln!(
                "xtask: wrote {} ({:.1}s)",
                d.env_file().display(),
                t0.elapsed().as_secs_f64()
            );
            if errors.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                Err(process::combine(errors))
            }
        }
        "down" => {
            let _guard = d.lock()?;
            for &k in &kinds {
                match process::stop(&d, k)? {
                    Some(pid) => eprintln!("xtask: stopped {} (pid {pid})", k.name()),
                    None => eprintln!("xtask: {} was not running", k.name()),
                }
            }
            write_env(&d)?;
            Ok(ExitCode::SUCCESS)
        }
        "status" => {
            let mut all_ready = true;
            for &k in &kinds {
                let (state, pid, port) = match process::status(&d, k) {
                    process::Status::Running {
                        pid,
                        port,
                        ready: true,
                    } => ("ready", pid.to_string(), port),
                    process::Status::Running { pid, port, .. } => {
                        all_ready = false;
                        ("running (not answering)", pid.to_string(), port)
                    }
                    process::Status::Stopped => {
                        all_ready = false;
                        (
                            "stopped",
                            "-".to_string(),
                            k.port().unwrap_or(k.default_port()),
                        )
                    }
                };
                // Ignore a closed stdout (`status | head -1`).
                let _ = writeln!(
                    io::stdout().lock(),
                    "{:<6} {:<24} pid {:<8} {:<44} {}",
                    k.name(),
                    state,
                    pid,
                    k.endpoint(port),
                    k.program()
                );
            }
            Ok(if all_ready {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        "env" => {
            let vars: Vec<(String, String)> = kinds
                .iter()
                .filter_map(|&k| match process::status(&d, k) {
                    process::Status::Running {
                        port, ready: true, ..
                    } => Some(k.exports(&d, port)),
                    _ => None,
                })
                .flatten()
                .collect();
            print_vars(&vars);
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unknown subcommand `{other}`; expected up, down, status or env"),
    }
}
