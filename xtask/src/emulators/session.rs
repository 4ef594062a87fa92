//! The emulators around one `cargo xtask test` run.

use std::fs::{self, File, TryLockError};
use std::time::Instant;

use anyhow::{Context, Result};

use super::{Dirs, Kind, process};
use crate::util;

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
        let (started, errors) = process::bring_up(&dirs, &Kind::ALL, false);
        for &k in &started {
            fs::write(dirs.session_file(k), "started by `cargo xtask test`\n")?;
        }
        if !errors.is_empty() {
            for &k in &started {
                if let Err(e) = process::stop(&dirs, k) {
                    eprintln!("xtask: stopping {}: {e:#}", k.name());
                }
            }
            let _ = super::write_env(&dirs);
            return Err(process::combine(errors));
        }
        let env = super::write_env(&dirs)?;
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
                super::remove_if_exists(&dirs.session_file(k))?;
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
                if let Some(pid) = process::stop(&dirs, k)? {
                    eprintln!("xtask: stopped {} (pid {pid})", k.name());
                }
            } else if let process::Status::Running { pid, .. } = process::status(&dirs, k) {
                eprintln!(
                    "xtask: leaving {} (pid {pid}) running: it was running before",
                    k.name()
                );
            }
        }
        super::write_env(&dirs)?;
        Ok(())
    }
}
