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

/// Every scheme the project knows, with the Cargo feature of this crate that builds
/// its backend in, so that a URL for a backend left out of the build gets a precise
/// message.
pub const KNOWN_SCHEMES: &[(&str, &str)] = &[
    ("file", "backend-file"),
    ("s3", "backend-s3"),
    ("gs", "backend-gcs"),
    ("gcs", "backend-gcs"),
    ("abs", "backend-abs"),
    ("sftp", "backend-sftp"),
];

/// A registry holding every backend built into this crate.
pub fn backends() -> Registry {
    let mut r = Registry::new(KNOWN_SCHEMES);
    for register in BUILT_IN {
        register(&mut r);
    }
    r
}

/// The registration of each backend feature enabled in this build (none is possible).
const BUILT_IN: &[fn(&mut Registry)] = &[
    #[cfg(feature = "backend-file")]
    backend_file::register,
    #[cfg(feature = "backend-s3")]
    backend_s3::register,
    #[cfg(feature = "backend-gcs")]
    backend_gcs::register,
    #[cfg(feature = "backend-abs")]
    backend_abs::register,
    #[cfg(feature = "backend-sftp")]
    backend_sftp::register,
];
