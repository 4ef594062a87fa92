//! file:// backend.
