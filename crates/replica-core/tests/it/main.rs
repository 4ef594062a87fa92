//! Integration tests of the replication core through its public API: one test binary
//! (one link, helpers compiled once), each module a topic. The store is the in-memory
//! one (`replica_core::memory`), so no backend crate is needed.

mod engine;
mod points;
