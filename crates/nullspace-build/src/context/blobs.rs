//! One owner's uploaded file blobs (`<data>/context-blobs/<owner>/sha256/<hex>`): which are
//! missing, and uploads streamed to disk and kept only when they hash to their digest.

use std::collections::BTreeSet;
use std::io::Write as _;

use sha2::{Digest as _, Sha256};

use nullspace_oci::{BlobStore, Digest};

use crate::data_dir::DataDir;
use crate::error::{io_at, BuildError};

/// Parses a `sha256:<64 hex>` digest (the only algorithm file blobs use).
pub fn parse_digest(text: &str) -> Result<Digest, String> {
    let digest: Digest = text.parse().map_err(|e| format!("digest {text:?}: {e}"))?;
    if digest.algorithm().as_str() != "sha256" {
        return Err(format!("digest {text:?}: file blobs are sha256"));
    }
    Ok(digest)
}

/// One owner's uploaded file blobs.
#[derive(Clone, Debug)]
pub struct ContextBlobs {
    pub(super) store: BlobStore,
}

impl ContextBlobs {
    /// Opens (creating) the blob store of `owner` in `data`.
    pub fn open(data: &DataDir, owner: &str) -> Result<ContextBlobs, BuildError> {
        let root = data.context_blobs().join(owner_dir(owner));
        Ok(ContextBlobs {
            store: BlobStore::new(root)?,
        })
    }

    /// The digests in `digests` this store lacks, in the given order, each once.
    pub fn missing<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>) -> Vec<String> {
        let mut seen = BTreeSet::new();
        digests
            .into_iter()
            .filter(|d| seen.insert(d.to_string()) && !self.store.contains(d))
            .map(ToString::to_string)
            .collect()
    }

    /// Bytes this owner's stored blobs take (what the per-owner quota counts).
    pub fn stored_bytes(&self) -> u64 {
        std::fs::read_dir(self.store.root().join("sha256"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.metadata().ok())
            .filter(|meta| meta.is_file())
            .map(|meta| meta.len())
            .sum()
    }

    /// Where the blob is (or would be) stored.
    pub fn path(&self, digest: &Digest) -> std::path::PathBuf {
        self.store.path(digest)
    }

    /// Whether the blob is present.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.store.contains(digest)
    }

    /// Starts an upload of the blob `digest`, refused beyond `limit` bytes.
    pub fn upload(&self, digest: Digest, limit: u64) -> Result<BlobUpload, BuildError> {
        Ok(BlobUpload {
            file: self.store.temp_file()?,
            hasher: Sha256::new(),
            written: 0,
            limit,
            digest,
            store: self.store.clone(),
        })
    }

    /// Removes a damaged blob.
    pub(super) fn discard(&self, digest: &Digest) {
        let _ = std::fs::remove_file(self.store.path(digest));
    }

    /// Opens a blob, checking its size.
    pub(super) fn open_blob(&self, digest: &Digest, size: u64) -> Result<std::fs::File, String> {
        if self.store.contains(digest) && !self.store.contains_sized(digest, size) {
            // Truncated (a crash after the upload): drop it so it is asked for again.
            self.discard(digest);
            return Err(format!(
                "the stored blob {digest} is damaged (not {size} bytes); upload it again"
            ));
        }
        if !self.store.contains_sized(digest, size) {
            return Err(format!(
                "blob {digest} ({size} bytes) was not uploaded; upload it and send the build again"
            ));
        }
        self.store.open(digest).map_err(|e| e.to_string())
    }
}

/// The directory name of an owner: owners are `[a-z0-9_-]` already, but a hash keeps any
/// other spelling out of the path too.
fn owner_dir(owner: &str) -> String {
    if !owner.is_empty()
        && owner.len() <= 64
        && owner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        owner.to_string()
    } else {
        format!("h-{:x}", Sha256::digest(owner.as_bytes()))
    }
}

/// Hashes what passes through to `inner`.
pub(super) struct HashingWriter<'a, W> {
    pub(super) inner: &'a mut W,
    pub(super) hasher: Sha256,
}

impl<W: std::io::Write> std::io::Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// More bytes than the limit.
    #[error("the blob is larger than the upload limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The content does not hash to the digest it was sent as.
    #[error("the uploaded content is {actual}, not {expected}")]
    DigestMismatch {
        /// The digest in the request.
        expected: String,
        /// The content's digest.
        actual: String,
    },
    /// The disk failed.
    #[error(transparent)]
    Io(Box<BuildError>),
}

/// An upload in progress: bytes are hashed as they are written to a temporary file, which is
/// renamed into the store only if the digest matches. Dropping it leaves nothing behind.
pub struct BlobUpload {
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    written: u64,
    limit: u64,
    digest: Digest,
    store: BlobStore,
}

impl BlobUpload {
    /// Appends a chunk.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), UploadError> {
        self.written += chunk.len() as u64;
        if self.written > self.limit {
            return Err(UploadError::TooLarge { limit: self.limit });
        }
        self.hasher.update(chunk);
        let path = self.file.path().to_path_buf();
        self.file
            .write_all(chunk)
            .map_err(|e| UploadError::Io(Box::new(io_at(&path)(e))))
    }

    /// Verifies the digest and moves the blob into the store (replacing an existing copy,
    /// which is how a forced upload repairs a damaged one). Returns the size.
    pub fn commit(self) -> Result<u64, UploadError> {
        let actual = format!("sha256:{:x}", self.hasher.finalize());
        if actual != self.digest.to_string() {
            return Err(UploadError::DigestMismatch {
                expected: self.digest.to_string(),
                actual,
            });
        }
        // No fsync per blob (a context has thousands): a blob damaged by a crash is caught when
        // a build copies it (the digest is checked again there) and asked for again.
        let dest = self.store.path(&self.digest);
        self.file
            .persist(&dest)
            .map_err(|e| UploadError::Io(Box::new(io_at(&dest)(e.error))))?;
        Ok(self.written)
    }
}
