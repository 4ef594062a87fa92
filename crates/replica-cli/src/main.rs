//! `replica`: continuous replication of SQLite databases to object storage.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.

mod ask;
mod backends;
mod child;
mod cli;
mod commands;
mod endpoint;
mod exit;
mod heartbeat;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (2).
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    init_tracing(&cli);
    raise_fd_limit();
    tune_allocator();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", exit::render(&e));
            ExitCode::from(exit::code_of(&e))
        }
    }
}

/// Each replicated database holds about eight descriptors (the database, WAL and
/// shared memory of two SQLite connections, plus our own); containers often start
/// with a soft limit of 1024 and a much higher hard one, so take the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    #[allow(unsafe_code)]
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                tracing::debug!(soft = lim.rlim_cur, "could not raise the open-file limit");
            }
        }
    }
}

/// Threads for blocking work (file I/O, decoding, SQLite calls made from async code).
/// Tokio's default, 512, let a thousand databases' spool writes hold 340 threads, each
/// with its touched stack and allocator cache; 64 keeps eight parallel restores and
/// their downloads well fed.
const MAX_BLOCKING_THREADS: usize = 64;

/// Three glibc allocator settings for a long-running process of many threads:
/// - glibc raises its mmap threshold each time a large block is freed, up to 32 MiB, so
///   later snapshot, scan and upload buffers come from the heap arenas, where freed pages
///   stay resident: a busy replicator crept from 36 to 54 MiB in five minutes and peaked
///   at 81 MiB in ten. Fixed, large buffers are mapped and returned on free (36.7 MiB
///   peak on the same run). Fixed at 512 KiB, not glibc's starting 128 KiB: hyper reads
///   a response into buffers of up to 408 KiB, and mapped afresh for every read each of
///   their pages faulted in as the kernel copied into it (225,000 faults and a sixth of
///   the CPU of a 1 GiB boot restore from S3; 37,000 faults and 1.9 instead of 2.3 s
///   with 512 KiB; the 1,000-database run's peak RSS moved from 190 to 192 MiB).
/// - The trim threshold keeps up to 1 MiB free at the top of an arena, so those read
///   buffers are reused rather than returned and faulted in again (24,000-40,000 faults
///   in that restore; 58,000-60,000 at glibc's 128 KiB).
/// - glibc gives threads up to eight arenas per core, each keeping its own free pages;
///   with a capture thread per database, a thousand databases spread over 16 arenas. Two
///   arenas took 16 MiB off that run; allocation here is far too rare to contend.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD: libc::c_int = 512 * 1024;
        const TRIM_THRESHOLD: libc::c_int = 1024 * 1024;
        const ARENAS: libc::c_int = 2;
        for (param, value, what) in [
            (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD, "mmap threshold"),
            (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD, "trim threshold"),
            (libc::M_ARENA_MAX, ARENAS, "arena count"),
        ] {
            // SAFETY: mallopt only sets an allocator parameter, under the allocator's lock.
            #[allow(unsafe_code)]
            let ok = unsafe { libc::mallopt(param, value) };
            if ok != 1 {
                tracing::debug!("could not set the allocator's {what}");
            }
        }
    }
}

fn init_tracing(cli: &cli::Cli) {
    use tracing_subscriber::EnvFilter;
    let default = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    // The SDKs log their own retries and credential lookups (an instance-metadata
    // response, kilobytes long, among them); our errors say what matters, so below
    // debug only their errors show.
    let quiet_sdks = if matches!(default, "debug" | "trace") {
        ""
    } else {
        ",aws_config=error,aws_smithy_runtime=error,aws_smithy_http_client=error,\
         azure_core=error,azure_identity=error,gcloud_storage=error,russh=error"
    };
    let default = match cli.log_level.as_deref() {
        Some(level) => level.to_owned(),
        None => format!("{default}{quiet_sdks}"),
    };
    let filter = EnvFilter::try_from_env("REPLICA_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match cli.log_format {
        cli::LogFormat::Json => fmt.json().flatten_event(true).init(),
        cli::LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}
