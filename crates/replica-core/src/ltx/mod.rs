//! LTX codec (filled in below).
