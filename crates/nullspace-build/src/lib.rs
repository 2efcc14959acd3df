//! Nullspace template builds: the request model, the import pipeline, caches, artifacts and
//! their atomic publication.
//!
//! A build walks one road: resolve the base reference, fetch its blobs into the content-addressed
//! store, apply the layers into an ext4 rootfs (or take it from the rootfs cache), derive runtime
//! defaults from the image config, then publish: one rename of the staging dir and one database
//! transaction. A failure at any point leaves no artifact and no staging dir behind.
#![deny(missing_docs)]

pub mod artifact;
pub mod build_vm;
pub mod buildkit;
pub mod context;
pub mod data_dir;
pub mod declarative;
pub mod definition;
pub mod dockerfile;
pub mod engine;
pub mod engine_dockerfile;
pub mod engine_template;
pub mod error;
pub mod events;
pub mod gc;
pub mod ids;
pub mod object_storage;
pub mod request;
mod rootfs_cache;
pub mod store;

pub use data_dir::DataDir;
pub use engine::{BuildOutcome, Engine};
pub use error::{BuildError, Phase};
pub use events::{BuildEvent, EventSink};
pub use request::{BaseSelector, BuildRequest};
