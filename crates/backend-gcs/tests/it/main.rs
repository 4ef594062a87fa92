//! Integration tests of the GCS backend: one test binary (one link, helpers compiled
//! once), each module a topic. They need fake-gcs-server, which `cargo xtask test`
//! starts.

mod conformance;
mod gcs;
mod support;
