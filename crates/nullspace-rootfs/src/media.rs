//! Layer media types: which ones we import and how each is compressed.

use crate::error::RootfsError;

/// How a layer blob is compressed, as told by its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// A gzip stream (possibly several members).
    Gzip,
    /// A zstd stream.
    Zstd,
}

/// The layer media types we accept, with their compression.
///
/// Docker's `foreign` layers and OCI's `nondistributable` layers are ordinary layers whose blobs
/// may live outside the registry; once fetched they apply like any other.
const KNOWN_LAYER_TYPES: &[(&str, Compression)] = &[
    ("application/vnd.oci.image.layer.v1.tar", Compression::None),
    (
        "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Gzip,
    ),
    (
        "application/vnd.oci.image.layer.v1.tar+zstd",
        Compression::Zstd,
    ),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        Compression::None,
    ),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        Compression::Gzip,
    ),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        Compression::Zstd,
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar",
        Compression::None,
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        Compression::Gzip,
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
        Compression::Zstd,
    ),
    (
        "application/vnd.docker.image.rootfs.foreign.diff.tar",
        Compression::None,
    ),
    (
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        Compression::Gzip,
    ),
];

/// Returns the compression of a layer media type, or an error naming an unsupported one.
pub fn layer_compression(media_type: &str, layer: &str) -> Result<Compression, RootfsError> {
    KNOWN_LAYER_TYPES
        .iter()
        .find(|(known, _)| *known == media_type)
        .map(|(_, compression)| *compression)
        .ok_or_else(|| RootfsError::UnsupportedMediaType {
            layer: layer.to_string(),
            media_type: media_type.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_layer_type_is_known() {
        for (media_type, expected) in [
            ("application/vnd.oci.image.layer.v1.tar", Compression::None),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Compression::Zstd,
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
                Compression::Zstd,
            ),
        ] {
            assert_eq!(layer_compression(media_type, "l").unwrap(), expected);
        }
    }

    #[test]
    fn unknown_media_type_is_named_in_the_error() {
        let err = layer_compression("application/vnd.example.squashfs", "sha256:ab").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("application/vnd.example.squashfs"), "{text}");
        assert!(text.contains("sha256:ab"), "{text}");
    }
}
