//! Integration tests of the S3 backend: one test binary (one link, helpers compiled
//! once), each module a topic. They need the S3 emulators that `cargo xtask test`
//! starts (moto, and SeaweedFS for the signature checks).

mod conformance;
mod s3;
mod support;
