//! URL dispatch: each enabled backend registers its schemes, and everything that opens a
//! replica URL (the CLI, an embedding application) resolves it through one registry.
//! Every client it opens is wrapped in [`Retrying`], so every backend retries the same way.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::client::ReplicaClient;
use crate::error::StoreError;
use crate::retry::{Policy, Retrying};

pub type OpenFuture =
    Pin<Box<dyn Future<Output = Result<Arc<dyn ReplicaClient>, StoreError>> + Send>>;

/// Opens a client for a full replica URL of this backend's scheme.
pub type Opener = fn(String) -> OpenFuture;

/// The schemes a build knows of but may have left out, each with what enables it (a
/// Cargo feature of the crate that assembles the registry): the core knows no scheme
/// and no feature name.
pub type KnownSchemes = &'static [(&'static str, &'static str)];

#[derive(Clone, Default)]
pub struct Registry {
    backends: Vec<(&'static str, Opener)>,
    known: KnownSchemes,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("schemes", &self.schemes())
            .finish()
    }
}

impl Registry {
    /// An empty registry that names, for a URL of a scheme in `known` but not
    /// registered, what would enable it.
    pub fn new(known: KnownSchemes) -> Self {
        Self {
            backends: Vec::new(),
            known,
        }
    }

    pub fn register(&mut self, scheme: &'static str, opener: Opener) {
        self.backends.retain(|(s, _)| *s != scheme);
        self.backends.push((scheme, opener));
    }

    pub fn schemes(&self) -> Vec<&'static str> {
        self.backends.iter().map(|(s, _)| *s).collect()
    }

    fn enabled(&self) -> String {
        self.schemes()
            .iter()
            .map(|s| format!("{s}://"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub async fn open(&self, url: &str) -> Result<Arc<dyn ReplicaClient>, StoreError> {
        let invalid = |reason: String| StoreError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let Some((scheme, _)) = url.split_once("://") else {
            let hint = match std::path::absolute(url) {
                Ok(abs) if url.starts_with(['/', '.']) || !url.contains(':') => {
                    format!("; a local directory is written file://{}", abs.display())
                }
                _ => String::new(),
            };
            return Err(invalid(format!(
                "no scheme{hint}; write it as one of {}",
                self.enabled()
            )));
        };
        if let Some((_, open)) = self.backends.iter().find(|(s, _)| *s == scheme) {
            let client = open(url.to_owned()).await?;
            return Ok(Arc::new(Retrying::new(client, Policy::REQUEST)));
        }
        Err(match self.known.iter().find(|(s, _)| *s == scheme) {
            Some((_, feature)) => invalid(format!(
                "the {scheme}:// backend is not built into this binary (Cargo feature `{feature}`); enabled: {}",
                self.enabled()
            )),
            None => invalid(format!(
                "unknown scheme {scheme:?}; enabled: {}",
                self.enabled()
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refuse(url: String) -> OpenFuture {
        Box::pin(async move {
            Err(StoreError::InvalidUrl {
                url,
                reason: "test opener".into(),
            })
        })
    }

    #[tokio::test]
    async fn dispatches_by_scheme_and_names_what_is_enabled() {
        let mut r = Registry::new(&[("file", "backend-file"), ("gs", "backend-gcs")]);
        r.register("file", refuse);
        let msg = |u: &str| {
            let r = r.clone();
            let u = u.to_owned();
            async move { r.open(&u).await.unwrap_err().to_string() }
        };
        assert!(msg("file:///x").await.contains("test opener"));
        let disabled = msg("gs://bucket/x").await;
        assert!(
            disabled.contains("backend-gcs") && disabled.contains("file://"),
            "{disabled}"
        );
        let unknown = msg("ftp://host/x").await;
        assert!(unknown.contains("unknown scheme \"ftp\""), "{unknown}");
        assert!(msg("/just/a/path").await.contains("no scheme"));
    }
}
