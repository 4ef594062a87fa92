//! Finds the backend for a replica URL by its scheme.

use std::sync::Arc;

use replica_core::client::ReplicaClient;

use crate::exit::usage;

const KNOWN: &[&str] = &["file", "s3", "gs", "gcs", "abs", "sftp"];

pub fn open(url: &str) -> anyhow::Result<Arc<dyn ReplicaClient>> {
    let Some((scheme, _)) = url.split_once(':') else {
        return Err(usage(format!(
            "replica URL {url:?} has no scheme; use one of {}",
            schemes()
        )));
    };
    match scheme {
        #[cfg(feature = "file")]
        "file" => Ok(Arc::new(backend_file::FileClient::parse(url)?)),
        s if KNOWN.contains(&s) => Err(usage(format!(
            "the {s}:// backend is not built into this binary; rebuild with its Cargo feature, or use one of {}",
            schemes()
        ))),
        s => Err(usage(format!(
            "unknown URL scheme {s:?} in {url:?}; use one of {}",
            schemes()
        ))),
    }
}

fn schemes() -> String {
    let built: &[(&str, bool)] = &[("file://", cfg!(feature = "file"))];
    built
        .iter()
        .filter(|(_, on)| *on)
        .map(|(s, _)| *s)
        .collect::<Vec<_>>()
        .join(", ")
}
