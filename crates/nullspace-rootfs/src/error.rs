//! Errors of the rootfs builder: each names the layer, the entry and the rule that failed.

use std::path::PathBuf;

/// Why a layer could not be applied or the rootfs could not be written.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The layer's media type is not one we import.
    #[error("layer {layer}: unsupported layer media type {media_type:?}")]
    UnsupportedMediaType {
        /// Digest of the layer.
        layer: String,
        /// The media type found in the manifest.
        media_type: String,
    },
    /// An entry broke one of the import rules (see [`crate::rules::Rule`]).
    #[error("layer {layer}: entry {entry:?} rejected: {rule}")]
    Rejected {
        /// Digest of the layer.
        layer: String,
        /// The entry's path as written in the tar.
        entry: String,
        /// The rule it broke.
        rule: crate::rules::Rule,
    },
    /// The layer is not a readable tar stream (or its compression is broken).
    #[error("layer {layer}: unreadable layer (is it really {compression}?): {source}")]
    Corrupt {
        /// Digest of the layer.
        layer: String,
        /// Compression the media type promised.
        compression: String,
        /// The underlying read error.
        source: std::io::Error,
    },
    /// The uncompressed layer does not hash to the diff_id the image config lists.
    #[error("layer {layer}: uncompressed content is {actual}, but the image config's diff_id says {expected}")]
    DiffIdMismatch {
        /// Digest of the layer.
        layer: String,
        /// The diff_id from the image config.
        expected: String,
        /// What the content hashed to.
        actual: String,
    },
    /// The ext4 writer refused an entry or failed to write.
    #[error("layer {layer}: entry {entry:?}: {source}")]
    Ext4 {
        /// Digest of the layer, or `rootfs` for work after the layers.
        layer: String,
        /// The entry being written.
        entry: String,
        /// The writer's error.
        source: nullspace_ext4::Error,
    },
    /// The import was stopped from outside (the build was cancelled or ran out of time).
    #[error("the import was stopped (the build was cancelled or ran out of time)")]
    Stopped,
    /// Reading a layer blob or writing the image failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}
