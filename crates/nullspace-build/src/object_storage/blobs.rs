//! Whole blobs keyed by digest:
//! - build-context blobs under `context/<owner>/sha256/<hex>`: an owner's manifest naming a
//!   digest reaches only that owner's uploads;
//! - registry layer blobs under `layers/sha256/<hex>`, stored once for every owner, and beside
//!   them `layer-access/<owner>/sha256/<hex>`, written only after that owner's own registry
//!   download of the layer was verified. A worker hands an owner a shared layer only when the
//!   owner's mark is there, so knowing a digest (a hostile registry can list any) never buys
//!   another owner's private layer: the one way to get the mark is to serve the real bytes.

use std::path::{Path, PathBuf};

use futures_util::StreamExt as _;
use nullspace_oci::{BlobStore, Digest};
use object_store::path::Path as ObjectPath;

use super::{hex_of, io_at, ObjectStorage, StorageError, PARALLEL};

/// Bytes per part of a multipart upload: S3 refuses parts under 5 MiB (all but the last).
const PART_SIZE: usize = 8 << 20;

impl ObjectStorage {
    /// `<space...>/sha256/<hex>` of a checked `sha256:<hex>` digest.
    fn blob_key(&self, space: &[&str], digest: &str) -> Result<ObjectPath, StorageError> {
        let hex = hex_of(digest).map_err(|message| StorageError::Corrupt {
            key: digest.to_string(),
            message,
        })?;
        let mut parts = space.to_vec();
        parts.extend(["sha256", hex]);
        Ok(self.key(&parts))
    }

    /// Sends the context blob `digest` of `owner` from `path` (once: a present one is kept).
    pub async fn put_context_blob(
        &self,
        owner: &str,
        digest: &str,
        path: &Path,
    ) -> Result<(), StorageError> {
        self.put_file(&self.blob_key(&["context", owner], digest)?, path)
            .await
    }

    /// Whether `owner` uploaded the context blob `digest` (to any API process).
    pub async fn has_context_blob(&self, owner: &str, digest: &str) -> Result<bool, StorageError> {
        self.exists(&self.blob_key(&["context", owner], digest)?)
            .await
    }

    /// The digests (`sha256:<hex>`) of every context blob `owner` uploaded: one listing, for
    /// questions about many digests at once.
    pub async fn context_blobs_of(
        &self,
        owner: &str,
    ) -> Result<std::collections::HashSet<String>, StorageError> {
        use futures_util::TryStreamExt as _;
        let prefix = self.key(&["context", owner, "sha256"]);
        let listed: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(Self::service(&prefix))?;
        Ok(listed
            .iter()
            .filter_map(|meta| meta.location.filename())
            .filter(|hex| hex_of(&format!("sha256:{hex}")).is_ok())
            .map(|hex| format!("sha256:{hex}"))
            .collect())
    }

    /// Streams the context blob `digest` of `owner` into `sink` (which checks the digest, as a
    /// context blob upload does); an error when the store has none or the sink refuses.
    pub async fn get_context_blob(
        &self,
        owner: &str,
        digest: &str,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(), StorageError> {
        let key = self.blob_key(&["context", owner], digest)?;
        match self.get_into(&key, sink).await? {
            true => Ok(()),
            false => Err(StorageError::Service {
                key: key.to_string(),
                message: "not found".into(),
            }),
        }
    }

    /// Shares the layer blob `digest` at `path`, which `owner` has just downloaded from a
    /// registry and verified, and marks the layer as the owner's. The blob goes first, so a
    /// mark always has its blob.
    pub async fn put_layer_blob(
        &self,
        owner: &str,
        digest: &str,
        path: &Path,
    ) -> Result<(), StorageError> {
        self.put_file(&self.blob_key(&["layers"], digest)?, path)
            .await?;
        let mark = self.blob_key(&["layer-access", owner], digest)?;
        if !self.exists(&mark).await? {
            self.put(&mark, Vec::new()).await?;
        }
        Ok(())
    }

    /// Whether `owner` downloaded and verified the layer `digest` from a registry itself, on
    /// any host.
    pub async fn owner_fetched_layer(
        &self,
        owner: &str,
        digest: &str,
    ) -> Result<bool, StorageError> {
        self.exists(&self.blob_key(&["layer-access", owner], digest)?)
            .await
    }

    /// Brings the shared layer blob `digest` of `size` bytes into `blobs`, checked against
    /// both while it streams; `progress` gets the bytes so far. `None` when the store has no
    /// such layer. A stored object whose bytes do not hash to its key is deleted (the next
    /// registry download shares it again) and reported; a size that differs from `size` (which
    /// the image's manifest gives) is reported without touching the object.
    pub async fn fetch_layer_blob(
        &self,
        digest: &Digest,
        size: u64,
        blobs: &BlobStore,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<Option<PathBuf>, StorageError> {
        let key = self.blob_key(&["layers"], &digest.to_string())?;
        let corrupt = |message: String| StorageError::Corrupt {
            key: key.to_string(),
            message,
        };
        let local = |error: nullspace_oci::Error| StorageError::Io {
            path: blobs.root().to_path_buf(),
            source: std::io::Error::other(error.to_string()),
        };
        let result = match self.store.get(&key).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(Self::service(&key)(error)),
        };
        if result.meta.size != size {
            return Err(corrupt(format!(
                "{} bytes stored, the image's manifest says {size}",
                result.meta.size
            )));
        }
        let mut writer = blobs.writer(digest, size).map_err(local)?;
        let mut received = 0u64;
        let mut stream = result.into_stream();
        while let Some(bytes) = stream.next().await {
            let bytes = bytes.map_err(Self::service(&key))?;
            writer.write(&bytes).map_err(|error| match error {
                nullspace_oci::Error::BlobSizeMismatch { .. } => corrupt(error.to_string()),
                other => local(other),
            })?;
            received += bytes.len() as u64;
            progress(received);
        }
        match writer.commit() {
            Ok(path) => Ok(Some(path)),
            Err(error @ nullspace_oci::Error::BlobDigestMismatch { .. }) => {
                if let Err(delete) = self.store.delete(&key).await {
                    tracing::warn!(%key, error = %delete, "could not delete a corrupt shared layer");
                }
                Err(corrupt(error.to_string()))
            }
            Err(error @ nullspace_oci::Error::BlobSizeMismatch { .. }) => {
                Err(corrupt(error.to_string()))
            }
            Err(error) => Err(local(error)),
        }
    }

    /// Sends the file at `path` to `key` (once: a present object is kept), streamed in parts
    /// of [`PART_SIZE`] with a bounded number in flight. A read or part failure aborts the
    /// upload; parts of a failed completion (or of an upload whose caller went away) are left
    /// to the bucket's rule for incomplete multipart uploads.
    async fn put_file(&self, key: &ObjectPath, path: &Path) -> Result<(), StorageError> {
        use tokio::io::AsyncReadExt as _;
        if self.exists(key).await? {
            return Ok(());
        }
        let mut file = tokio::fs::File::open(path).await.map_err(io_at(path))?;
        let upload = self
            .store
            .put_multipart(key)
            .await
            .map_err(Self::service(key))?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut buffer = vec![0u8; 1 << 20];
        let sent: Result<(), StorageError> = async {
            loop {
                let read = file.read(&mut buffer).await.map_err(io_at(path))?;
                if read == 0 {
                    return Ok(());
                }
                writer
                    .wait_for_capacity(PARALLEL)
                    .await
                    .map_err(Self::service(key))?;
                writer.write(&buffer[..read]);
            }
        }
        .await;
        match sent {
            Ok(()) => writer
                .finish()
                .await
                .map(|_| ())
                .map_err(Self::service(key)),
            Err(error) => {
                let _ = writer.abort().await;
                Err(error)
            }
        }
    }

    /// Streams the object `key` into `sink`; `false` when there is no such object. A sink's
    /// refusal is [`StorageError::Corrupt`].
    async fn get_into(
        &self,
        key: &ObjectPath,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<bool, StorageError> {
        let result = match self.store.get(key).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(error) => return Err(Self::service(key)(error)),
        };
        let mut stream = result.into_stream();
        while let Some(bytes) = stream.next().await {
            let bytes = bytes.map_err(Self::service(key))?;
            sink(&bytes).map_err(|message| StorageError::Corrupt {
                key: key.to_string(),
                message,
            })?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::sha256_digest;
    use super::*;
    use crate::object_storage::test_storage as storage;

    #[tokio::test]
    async fn context_blobs_stream_both_ways_and_belong_to_their_owner() {
        let temp = tempfile::tempdir().unwrap();
        let store = storage(&temp.path().join("bucket"));
        let blob = temp.path().join("blob");
        std::fs::write(&blob, vec![3u8; 17 << 20]).unwrap();
        let digest = sha256_digest(&std::fs::read(&blob).unwrap());
        store
            .put_context_blob("alice", &digest, &blob)
            .await
            .unwrap();
        let mut received = Vec::new();
        store
            .get_context_blob("alice", &digest, &mut |b| {
                received.extend_from_slice(b);
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(received, std::fs::read(&blob).unwrap());
        assert!(store
            .get_context_blob("bob", &digest, &mut |_| Ok(()))
            .await
            .is_err());
        assert!(store.has_context_blob("alice", &digest).await.unwrap());
        assert!(!store.has_context_blob("bob", &digest).await.unwrap());
        let listed = store.context_blobs_of("alice").await.unwrap();
        assert_eq!(listed.into_iter().collect::<Vec<_>>(), vec![digest.clone()]);
        assert!(store.context_blobs_of("bob").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_shared_layer_is_marked_per_owner_and_checked_on_the_way_in() {
        let temp = tempfile::tempdir().unwrap();
        let bucket = temp.path().join("bucket");
        let store = storage(&bucket);
        let blobs = BlobStore::new(temp.path().join("blobs")).unwrap();
        let layer = temp.path().join("layer");
        let content = vec![5u8; (6 << 20) + 17];
        std::fs::write(&layer, &content).unwrap();
        let digest = Digest::sha256_of(&content);
        let size = content.len() as u64;
        let none = |_: u64| {};

        assert!(store
            .fetch_layer_blob(&digest, size, &blobs, &none)
            .await
            .unwrap()
            .is_none());
        store
            .put_layer_blob("alice", &digest.to_string(), &layer)
            .await
            .unwrap();
        assert!(store
            .owner_fetched_layer("alice", &digest.to_string())
            .await
            .unwrap());
        // Bob knowing the digest is not enough.
        assert!(!store
            .owner_fetched_layer("bob", &digest.to_string())
            .await
            .unwrap());
        let seen = std::sync::atomic::AtomicU64::new(0);
        let path = store
            .fetch_layer_blob(&digest, size, &blobs, &|n| {
                seen.store(n, std::sync::atomic::Ordering::Relaxed)
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(std::fs::read(path).unwrap(), content);
        assert_eq!(seen.into_inner(), size);

        // A damaged shared copy is refused, deleted, and leaves nothing in the blob store.
        let other = BlobStore::new(temp.path().join("other")).unwrap();
        let object = bucket.join("layers/sha256").join(digest.hex());
        let mut damaged = content.clone();
        damaged[100] ^= 1;
        std::fs::write(&object, &damaged).unwrap();
        let error = store
            .fetch_layer_blob(&digest, size, &other, &none)
            .await
            .unwrap_err();
        assert!(matches!(error, StorageError::Corrupt { .. }), "{error}");
        assert!(!other.contains(&digest));
        assert!(!object.exists());
        // A size that differs from the manifest's is refused, and the object is left alone
        // (the manifest, which a tenant writes, may be the wrong one).
        std::fs::write(&object, &content).unwrap();
        let error = store
            .fetch_layer_blob(&digest, size - 1, &other, &none)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("manifest says"), "{error}");
        assert!(object.exists());
        assert!(!other.contains(&digest));
        assert_eq!(
            std::fs::read_dir(other.root().join("tmp")).unwrap().count(),
            0
        );
    }
}
