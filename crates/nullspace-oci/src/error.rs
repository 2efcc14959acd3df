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
    #[error("{url}: plain http is only allowed for hosts listed in NULLSPACE_INSECURE_REGISTRIES (and loopback hosts outside a build server)")]
    InsecureNotAllowed {
        /// The offending URL.
        url: String,
    },
    /// A URL names an address this client may not reach (see [`crate::address_policy`]).
    #[error("{url}: not allowed: {reason}; this server reaches private, loopback and link-local addresses only for hosts its operator lists in NULLSPACE_SERVER_ALLOWED_HOSTS")]
    AddressNotAllowed {
        /// The offending URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A configuration value is malformed.
    #[error("invalid registry configuration: {0}")]
    Config(String),
    /// Cloud credentials (GCP service-account key, AWS access key) are malformed, or their
    /// exchange for registry credentials failed.
    #[error(transparent)]
    CloudAuth(#[from] CloudAuthError),
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

/// What went wrong turning cloud credentials (a GCP service-account key, an AWS access key)
/// into registry credentials. Messages never contain a private key, a secret access key or a
/// token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CloudAuthError {
    /// The GCP service-account key is malformed.
    #[error("gcp service account key{}: invalid: {reason}", for_subject(.client_email.as_deref()))]
    InvalidGcpKey {
        /// The key's `client_email`, when it could be read.
        client_email: Option<String>,
        /// What is wrong (never the key itself).
        reason: String,
    },
    /// An AWS access key, region or endpoint is malformed.
    #[error("ecr credentials: invalid {field}: {reason}")]
    InvalidEcrCredentials {
        /// The field that failed (`region`, `access_key_id`, `endpoint`, ...).
        field: &'static str,
        /// What is wrong (never a secret).
        reason: String,
    },
    /// The credentials name another AWS region than the registry lives in.
    #[error(
        "ecr credentials are for region {region} but registry {registry} is in region \
         {registry_region}; use region {registry_region}"
    )]
    EcrRegionMismatch {
        /// The region of the credentials.
        region: String,
        /// The registry host.
        registry: String,
        /// The region in the registry host.
        registry_region: String,
    },
    /// The token endpoint refused the exchange.
    #[error(
        "{provider} token exchange ({subject}) at {endpoint} was rejected: http {status}{}",
        detail(.code.as_deref(), .message.as_deref())
    )]
    Rejected {
        /// `gcp` or `ecr`.
        provider: &'static str,
        /// Whose credentials (service account e-mail, or AWS region and access key id).
        subject: String,
        /// The token endpoint URL.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// The error code from the response (`invalid_grant`, `UnrecognizedClientException`).
        code: Option<String>,
        /// The error message from the response, shortened.
        message: Option<String>,
    },
    /// The token endpoint could not be reached, or answered something unusable.
    #[error("{provider} token exchange ({subject}) at {endpoint} failed: {reason}")]
    Exchange {
        /// `gcp` or `ecr`.
        provider: &'static str,
        /// Whose credentials.
        subject: String,
        /// The token endpoint URL.
        endpoint: String,
        /// What went wrong (never a secret).
        reason: String,
    },
}

fn for_subject(email: Option<&str>) -> String {
    email.map(|e| format!(" for {e}")).unwrap_or_default()
}

fn detail(code: Option<&str>, message: Option<&str>) -> String {
    let mut s = String::new();
    for part in [code, message].into_iter().flatten() {
        s.push_str(": ");
        s.push_str(part);
    }
    s
}
