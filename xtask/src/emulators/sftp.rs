//! SFTP: the system's OpenSSH sshd (Debian's openssh-server, installed with apt-get
//! when missing), on its own port with its own keys and config under `<state>/sftp`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};

use super::{Dirs, HOST, install, probe};
use crate::util;

/// The user sshd lets in: the one running it (root in CI).
pub(super) fn user() -> String {
    install::command_output("id", &["-un"])
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
        let mut cmd = if install::is_root() {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.args(["-n", "apt-get"]);
            c
        };
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        install::run_to_stderr(&mut cmd)
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
    super::remove_if_exists(path)?;
    super::remove_if_exists(&pubkey)?;
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

    let user = user();
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

    if install::is_root() {
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

pub(super) fn command(d: &Dirs, port: u16) -> Result<Command> {
    let sshd = ensure_sshd()?;
    let config = prepare_sshd(d, &sshd, port)?;
    let mut c = Command::new(sshd);
    c.args(["-D", "-e", "-f"]).arg(config);
    Ok(c)
}

/// sshd greets every connection with its version line.
pub(super) fn ready(port: u16) -> bool {
    probe::connect(port)
        .and_then(|mut s| probe::read_line(&mut s))
        .is_some_and(|l| l.starts_with("SSH-2.0-"))
}

pub(super) fn exports(d: &Dirs, port: u16) -> Vec<(String, String)> {
    let kv = |k: &str, v: String| (k.to_string(), v);
    vec![
        kv("REPLICA_SFTP_HOST", HOST.into()),
        kv("REPLICA_SFTP_PORT", port.to_string()),
        kv("REPLICA_SFTP_USER", user()),
        kv(
            "REPLICA_SFTP_KEY",
            d.sftp_client_key().display().to_string(),
        ),
        kv("REPLICA_SFTP_ROOT", d.sftp_root().display().to_string()),
        kv(
            "REPLICA_SFTP_HOST_KEY",
            d.sftp_dir().join("host_ed25519.pub").display().to_string(),
        ),
    ]
}
