//! Replication core for `replica`: the object-store seam ([`client::ReplicaClient`]),
//! the Litestream 0.5 replica layout, the LTX codec, the SQLite WAL reader, the
//! replication engine and the restore planner.
//!
//! Nothing in this crate depends on a cloud SDK; backends live in their own crates
//! and implement [`client::ReplicaClient`].

pub mod client;
pub mod content;
pub mod engine;
pub mod error;
pub mod file_mode;
mod host;
pub mod key;
pub mod layout;
pub mod lease;
pub mod ltx;
pub mod memory;
pub mod meta;
pub mod registry;
mod remote_read;
pub mod replica;
pub mod requests;
pub mod restore;
pub mod retry;
pub mod root_record;
pub mod spool;
pub mod store_url;
pub mod wal;
