//! Manifest, index, config and layer media types (OCI and Docker), and their classification.

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker foreign (non-distributable) gzip layer.
pub const DOCKER_FOREIGN_LAYER_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// Docker schema 1 manifest.
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Docker schema 1 signed manifest.
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The `Accept` header sent for manifests: every manifest and index type we can read.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// What a manifest media type denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// A single-platform image manifest (OCI or Docker schema 2).
    Image,
    /// A multi-platform index (OCI index or Docker manifest list).
    Index,
    /// Docker schema 1 (unsupported).
    Schema1,
    /// Anything else.
    Unknown,
}

/// Classifies a manifest media type; parameters (`; charset=…`) are ignored.
pub fn classify_manifest(media_type: &str) -> ManifestKind {
    match essence(media_type) {
        OCI_MANIFEST | DOCKER_MANIFEST => ManifestKind::Image,
        OCI_INDEX | DOCKER_MANIFEST_LIST => ManifestKind::Index,
        DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED => ManifestKind::Schema1,
        _ => ManifestKind::Unknown,
    }
}

/// The media type without parameters, trimmed.
pub fn essence(media_type: &str) -> &str {
    media_type.split(';').next().unwrap_or_default().trim()
}

/// Whether a layer media type is non-distributable (foreign): such blobs may be served from
/// their descriptor's `urls` instead of the registry.
pub fn is_non_distributable(media_type: &str) -> bool {
    let m = essence(media_type);
    m.starts_with("application/vnd.oci.image.layer.nondistributable.")
        || m == DOCKER_FOREIGN_LAYER_GZIP
}

/// Whether a config media type is an image config we can parse.
pub fn is_image_config(media_type: &str) -> bool {
    matches!(essence(media_type), OCI_CONFIG | DOCKER_CONFIG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_manifests() {
        assert_eq!(classify_manifest(OCI_MANIFEST), ManifestKind::Image);
        assert_eq!(classify_manifest(DOCKER_MANIFEST), ManifestKind::Image);
        assert_eq!(classify_manifest(OCI_INDEX), ManifestKind::Index);
        assert_eq!(
            classify_manifest(&format!("{DOCKER_MANIFEST_LIST}; charset=utf-8")),
            ManifestKind::Index
        );
        assert_eq!(classify_manifest(DOCKER_SCHEMA1), ManifestKind::Schema1);
        assert_eq!(
            classify_manifest(DOCKER_SCHEMA1_SIGNED),
            ManifestKind::Schema1
        );
        assert_eq!(classify_manifest("text/html"), ManifestKind::Unknown);
    }

    #[test]
    fn foreign_layers() {
        assert!(is_non_distributable(DOCKER_FOREIGN_LAYER_GZIP));
        assert!(is_non_distributable(
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        ));
        assert!(!is_non_distributable(OCI_LAYER_GZIP));
    }

    #[test]
    fn configs() {
        assert!(is_image_config(OCI_CONFIG));
        assert!(is_image_config(DOCKER_CONFIG));
        assert!(!is_image_config("application/vnd.cncf.helm.config.v1+json"));
    }
}
