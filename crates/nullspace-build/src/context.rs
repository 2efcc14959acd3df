//! Uploaded build contexts: a manifest of paths naming content-addressed file blobs, and its
//! materialisation into a build's staging dir for BuildKit.
//!
//! A client hashes its files, asks which blobs the server lacks, uploads only those (each
//! verified against its digest), then sends the manifest with the build request. The blobs live
//! per owner (`<data>/context-blobs/<owner>/sha256/<hex>`): a digest alone never gives one
//! owner another owner's file. The manifest is checked as strictly as a layer: relative paths
//! without `..`, no duplicates, nothing beneath a symlink, and it is written with
//! `create_new` into a directory this build created, so no entry can reach outside it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use nullspace_oci::{BlobStore, Digest};

use crate::data_dir::DataDir;
use crate::error::{io_at, BuildError};

pub use nullspace_api::context::{
    ContextEntry, ContextManifest, UploadStatus, MAX_CONTEXT_ENTRIES,
};

/// What [`materialize`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextStats {
    /// Regular files.
    pub files: usize,
    /// Bytes of file content.
    pub bytes: u64,
}

/// Writes the context `manifest` into `dest` (which must not exist), its files copied from
/// `blobs`. The manifest is validated first. A missing or altered blob is a
/// [`BuildError::FileUpload`] naming the path.
pub fn materialize(
    manifest: &ContextManifest,
    blobs: &ContextBlobs,
    dest: &Path,
) -> Result<ContextStats, BuildError> {
    manifest.validate()?;
    DirBuilder::new()
        .mode(0o755)
        .create(dest)
        .map_err(io_at(dest))?;
    let mut entries: Vec<&ContextEntry> = manifest.entries.iter().collect();
    // Parents before children; directory modes are set last so a read-only one can be filled.
    entries.sort_by(|a, b| a.path().cmp(b.path()));
    let mut stats = ContextStats::default();
    let mut dir_modes = Vec::new();
    // A blob named by several entries with the same mode is written once and hard-linked.
    let mut written: BTreeMap<(&str, u32), PathBuf> = BTreeMap::new();
    for entry in entries {
        let target = dest.join(entry.path());
        if let Some(parent) = target.parent() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(io_at(parent))?;
        }
        match entry {
            ContextEntry::Dir { mode, .. } => {
                match DirBuilder::new().mode(0o755).create(&target) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_at(&target)(e)),
                }
                dir_modes.push((target, *mode));
            }
            ContextEntry::Symlink { target: link, .. } => {
                std::os::unix::fs::symlink(link, &target).map_err(io_at(&target))?;
            }
            ContextEntry::File {
                path,
                digest,
                size,
                mode,
                ..
            } => {
                if let Some(first) = written.get(&(digest.as_str(), *mode)) {
                    std::fs::hard_link(first, &target).map_err(io_at(&target))?;
                    stats.files += 1;
                    stats.bytes += size;
                    continue;
                }
                let parsed = parse_digest(digest).map_err(|message| BuildError::FileUpload {
                    path: path.clone(),
                    message,
                })?;
                let mut source =
                    blobs
                        .open_blob(&parsed, *size)
                        .map_err(|message| BuildError::FileUpload {
                            path: path.clone(),
                            message,
                        })?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&target)
                    .map_err(io_at(&target))?;
                let mut hashing = HashingWriter {
                    inner: &mut file,
                    hasher: Sha256::new(),
                };
                let copied = std::io::copy(&mut source, &mut hashing).map_err(io_at(&target))?;
                let actual = format!("sha256:{:x}", hashing.hasher.finalize());
                if &actual != digest || copied != *size {
                    // Damaged on disk: drop it so the client's next question reports it
                    // missing and uploads it again.
                    blobs.discard(&parsed);
                    return Err(BuildError::FileUpload {
                            path: path.clone(),
                            message: format!(
                                "the stored blob {digest} is damaged ({copied} bytes, {actual}); upload it again"
                            ),
                        });
                }
                file.flush().map_err(io_at(&target))?;
                file.set_permissions(std::fs::Permissions::from_mode(*mode))
                    .map_err(io_at(&target))?;
                stats.files += 1;
                stats.bytes += copied;
                written.insert((digest.as_str(), *mode), target);
            }
        }
    }
    for (dir, mode) in dir_modes.into_iter().rev() {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
            .map_err(io_at(&dir))?;
    }
    Ok(stats)
}

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
    store: BlobStore,
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
    fn discard(&self, digest: &Digest) {
        let _ = std::fs::remove_file(self.store.path(digest));
    }

    /// Opens a blob, checking its size.
    fn open_blob(&self, digest: &Digest, size: u64) -> Result<std::fs::File, String> {
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
struct HashingWriter<'a, W> {
    inner: &'a mut W,
    hasher: Sha256,
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

/// Where the named context `name` of a build goes: `<scratch>/contexts/<sha256 of name>`
/// (names may hold `/`); the parent is created.
pub fn staging_named_context_dir(staging: &Path, name: &str) -> std::io::Result<PathBuf> {
    let contexts = staging.join("contexts");
    std::fs::create_dir_all(&contexts)?;
    Ok(contexts.join(format!("{:x}", Sha256::digest(name.as_bytes()))))
}

/// Where a build's uploaded context goes in its scratch dir (`<scratch>/context`).
pub fn staging_context_dir(staging: &Path) -> PathBuf {
    staging.join("context")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn file(path: &str, content: &[u8]) -> ContextEntry {
        ContextEntry::File {
            path: path.into(),
            digest: format!("sha256:{:x}", Sha256::digest(content)),
            size: content.len() as u64,
            mode: 0o644,
            upload: UploadStatus::Uploaded,
            reason: None,
        }
    }

    fn manifest(entries: Vec<ContextEntry>) -> ContextManifest {
        ContextManifest { entries }
    }

    #[test]
    fn bad_paths_and_entries_are_named() {
        for (entries, needle) in [
            (vec![file("../x", b"a")], "entries[0]"),
            (vec![file("/etc/passwd", b"a")], "must be relative"),
            (vec![file("a//b", b"a")], "must be relative"),
            (vec![file("a", b"a"), file("a", b"b")], "appears twice"),
            (
                vec![
                    ContextEntry::Symlink {
                        path: "l".into(),
                        target: "/etc".into(),
                    },
                    file("l/passwd", b"x"),
                ],
                "beneath the symlink",
            ),
            (vec![file("f", b"x"), file("f/g", b"y")], "beneath the file"),
        ] {
            let error = manifest(entries).validate().unwrap_err().to_string();
            assert!(error.contains(needle), "{error}");
        }
        let mut setuid = file("s", b"x");
        if let ContextEntry::File { mode, .. } = &mut setuid {
            *mode = 0o4755;
        }
        assert!(manifest(vec![setuid]).validate().is_err());
    }

    #[test]
    fn digest_ignores_order_and_upload_reports() {
        let a = manifest(vec![file("a", b"1"), file("b", b"2")]);
        let mut b = manifest(vec![file("b", b"2"), file("a", b"1")]);
        if let ContextEntry::File { upload, .. } = &mut b.entries[0] {
            *upload = UploadStatus::Reused;
        }
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), manifest(vec![file("a", b"1")]).digest());
    }

    #[test]
    fn upload_then_materialize() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        let blobs = ContextBlobs::open(&data, "alice").unwrap();
        let content = b"print('hi')\n";
        let entry = file("src/.hidden/app.py", content);
        let ContextEntry::File { digest, .. } = &entry else {
            unreachable!()
        };
        let digest = parse_digest(digest).unwrap();
        assert_eq!(blobs.missing([&digest]).len(), 1);
        // A wrong body never lands.
        let mut wrong = blobs.upload(digest.clone(), 1024).unwrap();
        wrong.write(b"other").unwrap();
        assert!(matches!(
            wrong.commit(),
            Err(UploadError::DigestMismatch { .. })
        ));
        let mut too_big = blobs.upload(digest.clone(), 4).unwrap();
        assert!(matches!(
            too_big.write(content),
            Err(UploadError::TooLarge { .. })
        ));
        assert!(blobs.missing([&digest]).len() == 1);
        let mut upload = blobs.upload(digest.clone(), 1024).unwrap();
        upload.write(content).unwrap();
        assert_eq!(upload.commit().unwrap(), content.len() as u64);
        assert!(blobs.missing([&digest]).is_empty());
        // Another owner does not see it.
        let bob = ContextBlobs::open(&data, "bob").unwrap();
        assert_eq!(bob.missing([&digest]).len(), 1);

        let m = manifest(vec![
            entry,
            ContextEntry::Dir {
                path: "empty".into(),
                mode: 0o700,
            },
            ContextEntry::Symlink {
                path: "link".into(),
                target: "src/.hidden/app.py".into(),
            },
        ]);
        let dest = dir.path().join("ctx");
        let stats = materialize(&m, &blobs, &dest).unwrap();
        assert_eq!(stats.files, 1);
        // The same blob under many paths is written once and hard-linked.
        let many = manifest(
            (0..50)
                .map(|i| file(&format!("copies/{i}.py"), content))
                .collect(),
        );
        assert_eq!(many.total_bytes(), 50 * content.len() as u64);
        materialize(&many, &blobs, &dir.path().join("many")).unwrap();
        let first = std::fs::metadata(dir.path().join("many/copies/0.py")).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::nlink(&first), 50);
        assert_eq!(
            std::fs::read(dest.join("src/.hidden/app.py")).unwrap(),
            content
        );
        assert_eq!(
            std::fs::metadata(dest.join("empty"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        assert_eq!(
            std::fs::read_link(dest.join("link")).unwrap(),
            Path::new("src/.hidden/app.py")
        );
        // A blob damaged on disk is caught when copied, and dropped so it is uploaded again.
        let stored = blobs.store.path(&digest);
        let mut bytes = std::fs::read(&stored).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(&stored, &bytes).unwrap();
        let error = materialize(&m, &blobs, &dir.path().join("ctx-damaged"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("damaged"), "{error}");
        assert_eq!(blobs.missing([&digest]).len(), 1);
        // Bob's build naming Alice's digest fails, naming the path.
        let error = materialize(&m, &bob, &dir.path().join("ctx-bob"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("src/.hidden/app.py") && error.contains("not uploaded"),
            "{error}"
        );
    }
}
