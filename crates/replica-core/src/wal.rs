//! WAL reader.
