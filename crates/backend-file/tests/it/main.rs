//! Integration tests of the file backend: one test binary (one link, helpers compiled
//! once), each module a topic.

mod conformance;
mod file_backend;
