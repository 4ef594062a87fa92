//! Integration tests of the `replica` binary: one test binary (one link, helpers
//! compiled once), each module a topic. They drive the built binary against real
//! SQLite writers, the protocol emulators that `cargo xtask test` starts, and
//! Litestream 0.5.17.

mod backends;
mod bad_input;
mod crash;
mod disk_full;
mod faults;
mod follow;
mod interop;
mod lease;
mod live;
mod long_running;
mod modes;
mod operate;
mod redaction;
mod replicate;
mod restore;
mod sharded;
mod support;
mod v03;
mod vfs;
