//! Nullspace templates: OCI images.
//!
//! Image references and their normalisation ([`Reference`]), the registry client
//! ([`RegistryClient`], OCI distribution spec) with its auth providers ([`Credentials`],
//! bearer tokens, Docker's config.json, GCP service-account keys ([`auth::gcp`]) and AWS ECR
//! access keys ([`auth::ecr`]) exchanged for registry credentials at pull time), manifests and indexes ([`manifest`]), platform
//! selection for the microVM ([`platform`]), the content-addressed [`BlobStore`] and local
//! sources (OCI layout directories, OCI archives, docker archives: [`layout`]).
//!
//! It knows nothing of ext4 or templates.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod address_policy;
pub mod auth;
pub mod client;
pub mod config;
pub mod digest;
pub mod error;
mod http_body;
pub mod layout;
pub mod manifest;
pub mod media_types;
pub mod platform;
pub mod reference;
pub mod registry_config;
pub mod resolved;
pub mod retry;
pub mod store;

pub use address_policy::AddressPolicy;
pub use auth::Credentials;
pub use client::{RegistryClient, RegistryConfig, RetryPolicy};
pub use config::ImageConfig;
pub use digest::Digest;
pub use error::Error;
pub use layout::{open_docker_archive, open_oci_archive, open_oci_layout};
pub use manifest::{Descriptor, ImageIndex, ImageManifest};
pub use platform::Platform;
pub use reference::{Reference, ReferenceError};
pub use resolved::{ImageSource, ResolvedImage};
pub use store::{BlobStore, BlobWriter};
