//! The crate's error type. Messages are lower case and name the registry, reference, digest,
//! media type, path or field that failed; they never contain credentials.

use std::path::PathBuf;

use crate::digest::{Digest, DigestError};
use crate::reference::ReferenceError;

/// Everything that can go wrong resolving, fetching or importing an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The image reference is malformed.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A digest is malformed.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// A registry could not be reached or the transfer broke (after retries).
    #[error("registry {registry}: request for {what} failed: {reason}")]
    Transport {
        /// Registry host or URL base.
        registry: String,
        /// What was requested (manifest reference, blob digest, token).
        what: String,
        /// The underlying error, without credentials.
        reason: String,
    },
    /// The registry answered with an unexpected HTTP status.
    #[error("registry {registry}: {what}: unexpected http status {status}")]
    Status {
        /// Registry host.
        registry: String,
        /// What was requested.
        what: String,
        /// HTTP status code.
        status: u16,
    },
    /// The registry does not have the manifest or blob.
    #[error("registry {registry}: {what} not found")]
    NotFound {
        /// Registry host.
        registry: String,
        /// What was requested.
        what: String,
    },
    /// The registry (or its token server) rejected the credentials.
    #[error("registry {registry}: authentication was rejected (http {status}){hint}")]
    AuthRejected {
        /// Registry host.
        registry: String,
        /// 401 or 403.
        status: u16,
        /// A hint (e.g. "no credentials were given"), or empty.
        hint: String,
    },
    /// The token server could not issue a token.
    #[error("registry {registry}: token server {realm} failed: {reason}")]
    Token {
        /// Registry host.
        registry: String,
        /// Token realm URL.
        realm: String,
        /// What went wrong.
        reason: String,
    },
    /// A manifest is a Docker schema 1 manifest.
    #[error("{what}: unsupported: docker schema 1 manifest (re-push the image with a current docker or buildkit)")]
    UnsupportedSchema1 {
        /// Reference or digest of the manifest.
        what: String,
    },
    /// A manifest, config or layer has a media type we do not handle.
    #[error("{what}: unsupported media type {media_type:?}")]
    UnsupportedMediaType {
        /// What carried it.
        what: String,
        /// The media type.
        media_type: String,
    },
    /// A manifest's bytes do not hash to the digest requested.
    #[error("manifest {what}: digest mismatch: expected {expected}, got {actual}")]
    ManifestDigestMismatch {
        /// Reference of the manifest.
        what: String,
        /// Expected digest.
        expected: Digest,
        /// Digest of the bytes received.
        actual: Digest,
    },
    /// A blob's bytes do not hash to its digest.
    #[error("blob {digest}: digest mismatch: received content hashes to {actual}")]
    BlobDigestMismatch {
        /// Expected digest.
        digest: Digest,
        /// Digest of the bytes received.
        actual: Digest,
    },
    /// A blob's size differs from its descriptor.
    #[error("blob {digest}: size mismatch: descriptor says {expected} bytes, received {actual}")]
    BlobSizeMismatch {
        /// Blob digest.
        digest: Digest,
        /// Size in the descriptor.
        expected: u64,
        /// Bytes received (may stop early once over `expected`).
        actual: u64,
    },
    /// A manifest or index is malformed.
    #[error("manifest {what}: invalid: {reason}")]
    InvalidManifest {
        /// Reference or digest of the manifest.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The image config is malformed.
    #[error("image config {digest}: invalid: {reason}")]
    InvalidConfig {
        /// Config digest.
        digest: Digest,
        /// What is wrong.
        reason: String,
    },
    /// No manifest in the index fits the wanted platform.
    #[error("{what}: no manifest for platform {wanted}; offered: {}", if offered.is_empty() { "none".to_owned() } else { offered.join(", ") })]
    NoMatchingPlatform {
        /// Reference of the index.
        what: String,
        /// The wanted platform.
        wanted: String,
        /// Descriptions of every entry offered.
        offered: Vec<String>,
    },
    /// The selected image cannot run in the microVM.
    #[error("{what}: platform rejected: {reason}")]
    PlatformRejected {
        /// Reference of the image.
        what: String,
        /// Why.
        reason: String,
    },
    /// Something exceeded a size limit.
    #[error("{what}: larger than the limit of {limit} bytes")]
    TooLarge {
        /// What.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// A plain-http endpoint was configured for a host that is neither loopback nor insecure.
    #[error("{url}: plain http is only allowed for loopback hosts and hosts listed in NULLSPACE_INSECURE_REGISTRIES")]
    InsecureNotAllowed {
        /// The offending URL.
        url: String,
    },
    /// A configuration value is malformed.
    #[error("invalid registry configuration: {0}")]
    Config(String),
    /// Cloud credentials (GCP service-account key, AWS access key) are malformed, or their
    /// exchange for registry credentials failed.
    #[error(transparent)]
    CloudAuth(#[from] crate::auth::CloudAuthError),
    /// Docker's config.json or a credential helper failed.
    #[error("docker credentials for {registry}: {reason}")]
    DockerCredentials {
        /// Registry host.
        registry: String,
        /// What failed (never the secret).
        reason: String,
    },
    /// A local file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A local OCI layout, OCI archive or docker archive is malformed.
    #[error("{}: {reason}", path.display())]
    InvalidLocalImage {
        /// The directory or tar file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
