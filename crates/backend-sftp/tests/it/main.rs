//! Integration tests of the sftp backend: one test binary (one link, helpers compiled
//! once), each module a topic. They need OpenSSH sshd, which `cargo xtask test`
//! starts.

mod conformance;
mod sftp;
mod support;
