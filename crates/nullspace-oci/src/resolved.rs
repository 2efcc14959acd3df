//! A resolved image: the selected manifest, its config and where it came from.

use std::path::PathBuf;

use crate::config::{ImageConfig, MAX_CONFIG_BYTES};
use crate::digest::Digest;
use crate::error::Error;
use crate::manifest::{Descriptor, ImageManifest};
use crate::media_types;
use crate::platform::{self, Platform};
use crate::reference::Reference;

/// Where a resolved image came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A registry; `endpoint` is the base URL that served the manifest (a mirror or the
    /// registry itself).
    Registry {
        /// `scheme://host[:port]`.
        endpoint: String,
    },
    /// An OCI image layout directory.
    OciLayout(PathBuf),
    /// An OCI archive (tar of a layout, e.g. BuildKit `--output type=oci`).
    OciArchive(PathBuf),
    /// A `docker save` tar.
    DockerArchive(PathBuf),
}

/// An image resolved to one platform's manifest and config.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The reference pulled (registry images), or the name recorded in a local source.
    pub reference: Option<Reference>,
    /// Digest of the selected image manifest (the cache key; never the tag). For docker
    /// archives, which have no manifest, the digest of the manifest synthesised from them.
    pub manifest_digest: Digest,
    /// Digest of the index the manifest was selected from, if any.
    pub index_digest: Option<Digest>,
    /// The raw manifest bytes (`manifest_digest` is their digest).
    pub manifest_raw: Vec<u8>,
    /// The parsed manifest.
    pub manifest: ImageManifest,
    /// The raw config bytes (their digest is `manifest.config.digest`).
    pub config_raw: Vec<u8>,
    /// The parsed config.
    pub config: ImageConfig,
    /// The platform of the selected image.
    pub platform: Platform,
    /// Where it came from.
    pub source: ImageSource,
}

impl ResolvedImage {
    /// The layers, bottom first.
    pub fn layers(&self) -> &[Descriptor] {
        &self.manifest.layers
    }
}

/// Checks the config descriptor's media type, verifies and parses the config and checks the
/// image's platform; returns the config and actual platform.
pub(crate) fn check_config_blob(
    what: &str,
    manifest: &ImageManifest,
    config_raw: &[u8],
    wanted: &Platform,
) -> Result<(ImageConfig, Platform), Error> {
    let desc = &manifest.config;
    if !media_types::is_image_config(&desc.media_type) {
        return Err(Error::UnsupportedMediaType {
            what: format!("{what}: config {}", desc.digest),
            media_type: desc.media_type.clone(),
        });
    }
    if desc.size > MAX_CONFIG_BYTES {
        return Err(Error::TooLarge {
            what: format!("image config {}", desc.digest),
            limit: MAX_CONFIG_BYTES,
        });
    }
    if config_raw.len() as u64 != desc.size {
        return Err(Error::BlobSizeMismatch {
            digest: desc.digest.clone(),
            expected: desc.size,
            actual: config_raw.len() as u64,
        });
    }
    if !desc.digest.matches(config_raw) {
        return Err(Error::BlobDigestMismatch {
            digest: desc.digest.clone(),
            actual: desc.digest.same_algorithm_of(config_raw),
        });
    }
    let config = ImageConfig::parse(config_raw, &desc.digest)?;
    let actual =
        platform::check_config(&config, wanted).map_err(|reason| Error::PlatformRejected {
            what: what.to_owned(),
            reason,
        })?;
    Ok((config, actual))
}
