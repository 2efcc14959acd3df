//! Artifact dirs on object storage:
//! - every file is cut at fixed 4 MiB offsets; windows that hold no data (holes, found with
//!   `SEEK_DATA`/`SEEK_HOLE`, or all zeros) are not sent at all, so a sparse 2 GiB rootfs costs
//!   what it holds;
//! - each chunk is stored once under `chunks/sha256/<hex>` (a chunk another artifact already
//!   sent is skipped: templates built on one parent share most of theirs), uploaded several at
//!   a time;
//! - the manifest (paths, modes, sizes, chunk offsets and digests) goes under
//!   `artifacts/sha256/<hex>`; its digest is what the build's record keeps.
//!
//! A download checks the manifest against its digest and every chunk against its own before it
//! is written, into a staging dir that is renamed into place only when complete: a corrupt or
//! truncated object fails the fetch and leaves nothing behind.

use std::os::unix::fs::{FileExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};

use super::{
    hex_of, io_at, sha256_digest, ObjectStorage, StorageError, CHUNK_SIZE, MAX_MANIFEST_BYTES,
    PARALLEL,
};

/// One entry of an artifact manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ManifestEntry {
    /// A directory.
    Dir {
        /// Path relative to the artifact dir.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Path relative to the artifact dir.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Length in bytes (holes included).
        size: u64,
        /// The chunks that hold data; everything else is zeros.
        chunks: Vec<Chunk>,
    },
}

/// A chunk of a file: `CHUNK_SIZE` bytes from `offset` (fewer at the end of the file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Where it starts (a multiple of [`CHUNK_SIZE`]).
    pub offset: u64,
    /// `sha256:<hex>` of its bytes.
    pub digest: String,
}

/// What an artifact dir holds, as sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactManifest {
    /// Format version (1).
    pub schema: u32,
    /// The chunk size used.
    pub chunk_size: u64,
    /// Dirs before the files in them.
    pub entries: Vec<ManifestEntry>,
}

/// What a transfer did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransferReport {
    /// The manifest's digest (`sha256:<hex>`).
    pub manifest_digest: String,
    /// Logical bytes of the files (holes included).
    pub logical_bytes: u64,
    /// Bytes sent or received.
    pub transferred_bytes: u64,
    /// Chunks sent or received.
    pub chunks_transferred: u64,
    /// Chunks the store already had (upload) or that were holes (both).
    pub chunks_skipped: u64,
}

/// A manifest path must stay inside the artifact dir.
fn safe_relative(path: &str) -> Result<&Path, String> {
    let relative = Path::new(path);
    if path.is_empty()
        || relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!("entry path {path:?} leaves the artifact dir"));
    }
    Ok(relative)
}

impl ObjectStorage {
    /// Sends the artifact dir `dir`; returns the manifest's digest and what was sent.
    pub async fn upload_artifact(&self, dir: &Path) -> Result<TransferReport, StorageError> {
        let mut entries = Vec::new();
        let mut report = TransferReport::default();
        let mut pending = vec![PathBuf::new()];
        while let Some(relative) = pending.pop() {
            let here = dir.join(&relative);
            let mut children: Vec<_> = std::fs::read_dir(&here)
                .map_err(io_at(&here))?
                .collect::<Result<_, _>>()
                .map_err(io_at(&here))?;
            children.sort_by_key(std::fs::DirEntry::file_name);
            for child in children {
                let path = child.path();
                let meta = std::fs::symlink_metadata(&path).map_err(io_at(&path))?;
                let name = relative.join(child.file_name());
                let text = name.to_string_lossy().into_owned();
                let mode = meta.permissions().mode() & 0o7777;
                if meta.is_dir() {
                    entries.push(ManifestEntry::Dir { path: text, mode });
                    pending.push(name);
                } else if meta.is_file() {
                    let chunks = self.upload_file(&path, meta.len(), &mut report).await?;
                    report.logical_bytes += meta.len();
                    entries.push(ManifestEntry::File {
                        path: text,
                        mode,
                        size: meta.len(),
                        chunks,
                    });
                } else {
                    return Err(StorageError::Io {
                        path,
                        source: std::io::Error::other(
                            "only files and dirs can be sent to object storage",
                        ),
                    });
                }
            }
        }
        let manifest = ArtifactManifest {
            schema: 1,
            chunk_size: CHUNK_SIZE,
            entries,
        };
        let bytes = serde_json::to_vec(&manifest).map_err(|e| StorageError::Corrupt {
            key: "manifest".into(),
            message: e.to_string(),
        })?;
        let digest = sha256_digest(&bytes);
        let key = self.key(&["artifacts", "sha256", hex_of(&digest).unwrap_or_default()]);
        report.transferred_bytes += bytes.len() as u64;
        self.put(&key, bytes).await?;
        report.manifest_digest = digest;
        Ok(report)
    }

    /// Sends the chunks of one file that hold data and the store lacks.
    async fn upload_file(
        &self,
        path: &Path,
        size: u64,
        report: &mut TransferReport,
    ) -> Result<Vec<Chunk>, StorageError> {
        let file = std::fs::File::open(path).map_err(io_at(path))?;
        let windows = data_windows(&file, size).map_err(io_at(path))?;
        report.chunks_skipped += size
            .div_ceil(CHUNK_SIZE)
            .saturating_sub(windows.len() as u64);
        let file = Arc::new(file);
        let results: Vec<Option<(Chunk, u64, bool)>> = stream::iter(windows)
            .map(|offset| {
                let file = file.clone();
                async move {
                    let length = CHUNK_SIZE.min(size - offset);
                    let mut buffer = vec![0u8; usize::try_from(length).unwrap_or(0)];
                    file.read_exact_at(&mut buffer, offset)
                        .map_err(io_at(path))?;
                    if buffer.iter().all(|b| *b == 0) {
                        return Ok(None);
                    }
                    let digest = sha256_digest(&buffer);
                    let key = self.key(&["chunks", "sha256", hex_of(&digest).unwrap_or_default()]);
                    let sent = if self.exists(&key).await? {
                        false
                    } else {
                        self.put(&key, buffer).await?;
                        true
                    };
                    Ok::<_, StorageError>(Some((Chunk { offset, digest }, length, sent)))
                }
            })
            .buffered(PARALLEL)
            .try_collect()
            .await?;
        let mut chunks = Vec::new();
        for result in results {
            match result {
                None => report.chunks_skipped += 1,
                Some((chunk, length, sent)) => {
                    if sent {
                        report.transferred_bytes += length;
                        report.chunks_transferred += 1;
                    } else {
                        report.chunks_skipped += 1;
                    }
                    chunks.push(chunk);
                }
            }
        }
        Ok(chunks)
    }

    /// Fetches the artifact whose manifest is `manifest_digest` into `destination` (which must
    /// not exist), through `staging` (a fresh dir beside it, renamed into place when complete).
    pub async fn download_artifact(
        &self,
        manifest_digest: &str,
        staging: &Path,
        destination: &Path,
    ) -> Result<TransferReport, StorageError> {
        let corrupt = |key: &ObjectPath, message: String| StorageError::Corrupt {
            key: key.to_string(),
            message,
        };
        let hex = hex_of(manifest_digest).map_err(|m| StorageError::Corrupt {
            key: "manifest".into(),
            message: m,
        })?;
        let key = self.key(&["artifacts", "sha256", hex]);
        let bytes = self.get(&key, MAX_MANIFEST_BYTES).await?;
        if sha256_digest(&bytes) != manifest_digest {
            return Err(corrupt(
                &key,
                format!("content does not match {manifest_digest}"),
            ));
        }
        let manifest: ArtifactManifest =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(&key, e.to_string()))?;
        if manifest.schema != 1 || manifest.chunk_size != CHUNK_SIZE {
            return Err(corrupt(
                &key,
                format!(
                    "schema {} with {}-byte chunks is not one this version reads",
                    manifest.schema, manifest.chunk_size
                ),
            ));
        }
        let _ = std::fs::remove_dir_all(staging);
        std::fs::create_dir_all(staging).map_err(io_at(staging))?;
        let result = self.download_entries(&manifest, &key, staging).await;
        let mut report = match result {
            Ok(report) => report,
            Err(error) => {
                let _ = std::fs::remove_dir_all(staging);
                return Err(error);
            }
        };
        if let Some(parent) = destination.parent() {
            std::fs::create_dir_all(parent).map_err(io_at(parent))?;
        }
        std::fs::rename(staging, destination).map_err(|source| {
            let _ = std::fs::remove_dir_all(staging);
            StorageError::Io {
                path: destination.to_path_buf(),
                source,
            }
        })?;
        report.manifest_digest = manifest_digest.to_string();
        report.transferred_bytes += bytes.len() as u64;
        Ok(report)
    }

    async fn download_entries(
        &self,
        manifest: &ArtifactManifest,
        manifest_key: &ObjectPath,
        root: &Path,
    ) -> Result<TransferReport, StorageError> {
        let mut report = TransferReport::default();
        for entry in &manifest.entries {
            let (path, mode) = match entry {
                ManifestEntry::Dir { path, mode } | ManifestEntry::File { path, mode, .. } => {
                    (path, *mode)
                }
            };
            let relative = safe_relative(path).map_err(|message| StorageError::Corrupt {
                key: manifest_key.to_string(),
                message,
            })?;
            let target = root.join(relative);
            match entry {
                ManifestEntry::Dir { .. } => {
                    std::fs::create_dir_all(&target).map_err(io_at(&target))?;
                }
                ManifestEntry::File { size, chunks, .. } => {
                    let file = std::fs::File::create(&target).map_err(io_at(&target))?;
                    file.set_len(*size).map_err(io_at(&target))?;
                    report.logical_bytes += size;
                    report.chunks_skipped += size
                        .div_ceil(CHUNK_SIZE)
                        .saturating_sub(chunks.len() as u64);
                    let file = Arc::new(file);
                    // Owned items: a closure over borrowed ones would make the future's
                    // `Send` unprovable (higher-ranked lifetimes) for the server's handlers.
                    let size = *size;
                    let work: Vec<(Chunk, Arc<std::fs::File>, PathBuf, String, String)> = chunks
                        .iter()
                        .map(|chunk| {
                            (
                                chunk.clone(),
                                file.clone(),
                                target.clone(),
                                path.clone(),
                                manifest_key.to_string(),
                            )
                        })
                        .collect();
                    let received: Vec<u64> = stream::iter(work)
                        .map(|(chunk, file, target, path, manifest_key)| async move {
                            let hex =
                                hex_of(&chunk.digest).map_err(|message| StorageError::Corrupt {
                                    key: manifest_key.clone(),
                                    message,
                                })?;
                            if chunk.offset % CHUNK_SIZE != 0 || chunk.offset >= size {
                                return Err(StorageError::Corrupt {
                                    key: manifest_key,
                                    message: format!(
                                        "{path}: chunk offset {} is outside the file",
                                        chunk.offset
                                    ),
                                });
                            }
                            let length = CHUNK_SIZE.min(size - chunk.offset);
                            let key = self.key(&["chunks", "sha256", hex]);
                            let bytes = self
                                .get(&key, usize::try_from(CHUNK_SIZE).unwrap_or(usize::MAX))
                                .await?;
                            if bytes.len() as u64 != length || sha256_digest(&bytes) != chunk.digest
                            {
                                return Err(StorageError::Corrupt {
                                    key: key.to_string(),
                                    message: format!(
                                        "content does not match {} ({} bytes, {length} expected)",
                                        chunk.digest,
                                        bytes.len()
                                    ),
                                });
                            }
                            file.write_all_at(&bytes, chunk.offset)
                                .map_err(io_at(&target))?;
                            Ok(length)
                        })
                        .buffer_unordered(PARALLEL)
                        .try_collect()
                        .await?;
                    report.chunks_transferred += received.len() as u64;
                    report.transferred_bytes += received.iter().sum::<u64>();
                    file.sync_all().map_err(io_at(&target))?;
                }
            }
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode & 0o7777))
                .map_err(io_at(&target))?;
        }
        Ok(report)
    }
}

/// The chunk-aligned offsets of `file` (of `size` bytes) whose windows hold data, by
/// `SEEK_DATA`/`SEEK_HOLE`; every window when the filesystem cannot tell.
fn data_windows(file: &std::fs::File, size: u64) -> std::io::Result<Vec<u64>> {
    let mut windows: Vec<u64> = Vec::new();
    let mut position = 0;
    while position < size {
        let data = match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(position)) {
            Ok(offset) => offset,
            // No data after `position`.
            Err(rustix::io::Errno::NXIO) => break,
            Err(errno) => return Err(errno.into()),
        };
        let hole = rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(data))
            .map_err(std::io::Error::from)?
            .min(size);
        let mut window = data / CHUNK_SIZE * CHUNK_SIZE;
        while window < hole {
            if windows.last() != Some(&window) {
                windows.push(window);
            }
            window += CHUNK_SIZE;
        }
        position = hole.max(data + 1);
    }
    Ok(windows)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::object_storage::test_storage as storage;

    #[tokio::test]
    async fn a_sparse_artifact_round_trips_without_its_holes() {
        let temp = tempfile::tempdir().unwrap();
        let artifact = temp.path().join("artifact");
        std::fs::create_dir_all(artifact.join("snapshot")).unwrap();
        let rootfs = std::fs::File::create(artifact.join("rootfs.ext4")).unwrap();
        rootfs.set_len(64 * CHUNK_SIZE + 123).unwrap();
        rootfs.write_all_at(b"superblock", 1024).unwrap();
        rootfs
            .write_all_at(&[7u8; 5000], 40 * CHUNK_SIZE - 100)
            .unwrap();
        rootfs.write_all_at(b"tail", 64 * CHUNK_SIZE + 100).unwrap();
        std::fs::write(artifact.join("template.json"), b"{}").unwrap();
        std::fs::write(artifact.join("snapshot/state"), vec![1u8; 10]).unwrap();
        let store = storage(&temp.path().join("bucket"));

        let sent = store.upload_artifact(&artifact).await.unwrap();
        // 4 data windows of the rootfs (two for the write across a boundary) + 2 small files.
        assert_eq!(sent.chunks_transferred, 6);
        assert!(sent.transferred_bytes < 5 * CHUNK_SIZE, "{sent:?}");
        // Sending it again sends no chunk.
        let again = store.upload_artifact(&artifact).await.unwrap();
        assert_eq!(again.chunks_transferred, 0);
        assert_eq!(again.manifest_digest, sent.manifest_digest);

        let destination = temp.path().join("fetched");
        let received = store
            .download_artifact(
                &sent.manifest_digest,
                &temp.path().join("staging"),
                &destination,
            )
            .await
            .unwrap();
        assert_eq!(received.chunks_transferred, 6);
        for file in ["rootfs.ext4", "template.json", "snapshot/state"] {
            assert_eq!(
                std::fs::read(artifact.join(file)).unwrap(),
                std::fs::read(destination.join(file)).unwrap(),
                "{file}"
            );
        }
        // The fetched rootfs is sparse too.
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(destination.join("rootfs.ext4")).unwrap();
        assert!(meta.blocks() * 512 < 5 * CHUNK_SIZE);
    }

    #[tokio::test]
    async fn corrupt_chunks_and_manifests_are_refused_and_leave_nothing() {
        let temp = tempfile::tempdir().unwrap();
        let artifact = temp.path().join("artifact");
        std::fs::create_dir_all(&artifact).unwrap();
        std::fs::write(artifact.join("template.json"), b"{\"a\":1}").unwrap();
        let bucket = temp.path().join("bucket");
        let store = storage(&bucket);
        let sent = store.upload_artifact(&artifact).await.unwrap();
        // Damage the one chunk.
        let chunk_dir = bucket.join("chunks/sha256");
        let chunk = std::fs::read_dir(&chunk_dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        std::fs::write(chunk.path(), b"{\"a\":2}").unwrap();
        let destination = temp.path().join("fetched");
        let error = store
            .download_artifact(
                &sent.manifest_digest,
                &temp.path().join("staging"),
                &destination,
            )
            .await
            .unwrap_err();
        assert!(error.to_string().contains("does not match"), "{error}");
        assert!(!destination.exists());
        assert!(!temp.path().join("staging").exists());
        // A manifest digest that names nothing.
        let missing = format!("sha256:{}", "0".repeat(64));
        assert!(store
            .download_artifact(&missing, &temp.path().join("staging"), &destination)
            .await
            .is_err());
        // Paths that leave the artifact dir.
        assert!(safe_relative("../x").is_err());
        assert!(safe_relative("/etc/passwd").is_err());
        assert!(safe_relative("snapshot/state").is_ok());
    }
}
