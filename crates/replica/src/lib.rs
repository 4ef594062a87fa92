//! `replica` as a library: the replication core plus the backends enabled by Cargo
//! features, resolved by URL scheme through one [`Registry`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use replica::core::engine::{EngineConfig, Replicator};
//! use replica::core::replica::Replica;
//!
//! let client = replica::backends().open("file:///var/backups/app").await?;
//! let running = Replicator::start("app.db".as_ref(), Replica::new(client), EngineConfig::default()).await?;
//! // ... serve ...
//! running.shutdown(std::time::Duration::from_secs(30)).await?;
//! # Ok(()) }
//! ```

pub mod config;
pub mod deploy;

pub use config::{Config, ConfigError, Mode};
pub use deploy::{DeployError, Deployment, Running};
pub use replica_core as core;
pub use replica_core::registry::Registry;

// Only the backend registrations below use these, and a build may enable none.
#[cfg(any(
    feature = "backend-file",
    feature = "backend-s3",
    feature = "backend-gcs",
    feature = "backend-abs",
    feature = "backend-sftp"
))]
use {replica_core::client::ReplicaClient, std::sync::Arc};

/// A registry holding every backend built into this crate.
pub fn backends() -> Registry {
    let mut r = Registry::default();
    for register in BUILT_IN {
        register(&mut r);
    }
    r
}

/// One entry per backend feature enabled in this build (none is possible).
const BUILT_IN: &[fn(&mut Registry)] = &[
    #[cfg(feature = "backend-file")]
    |r| {
        r.register("file", |url| {
            Box::pin(async move {
                let client = backend_file::FileClient::parse(&url)?;
                Ok(Arc::new(client) as Arc<dyn ReplicaClient>)
            })
        })
    },
    #[cfg(feature = "backend-s3")]
    |r| {
        r.register("s3", |url| {
            Box::pin(async move {
                let client = backend_s3::S3Client::from_url(&url).await?;
                Ok(Arc::new(client) as Arc<dyn ReplicaClient>)
            })
        })
    },
    #[cfg(feature = "backend-gcs")]
    |r| {
        for scheme in ["gs", "gcs"] {
            r.register(scheme, |url| {
                Box::pin(async move {
                    let client = backend_gcs::GcsClient::from_url(&url).await?;
                    Ok(Arc::new(client) as Arc<dyn ReplicaClient>)
                })
            });
        }
    },
    #[cfg(feature = "backend-abs")]
    |r| {
        r.register("abs", |url| {
            Box::pin(async move {
                let client = backend_abs::AbsClient::from_url(&url).await?;
                Ok(Arc::new(client) as Arc<dyn ReplicaClient>)
            })
        })
    },
    #[cfg(feature = "backend-sftp")]
    |r| {
        r.register("sftp", |url| {
            Box::pin(async move {
                let client = backend_sftp::SftpClient::from_url(&url).await?;
                Ok(Arc::new(client) as Arc<dyn ReplicaClient>)
            })
        })
    },
];
