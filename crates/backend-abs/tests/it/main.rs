//! Integration tests of the Azure Blob Storage backend: one test binary (one link,
//! helpers compiled once), each module a topic. They need Azurite, which
//! `cargo xtask test` starts.

mod conformance;
mod support;
