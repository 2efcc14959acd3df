//! The content-addressed blob store: `<root>/sha256/<hex>`, written through `<root>/tmp`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::Error;

/// A directory of blobs named by their digest. Every blob in it was verified when written.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Result<BlobStore, Error> {
        let root = root.into();
        for sub in ["sha256", "sha512", "tmp"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        Ok(BlobStore { root })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `digest` lives (whether or not it is present).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// Whether the blob is present.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Whether the blob is present with exactly `size` bytes.
    pub fn contains_sized(&self, digest: &Digest, size: u64) -> bool {
        std::fs::metadata(self.path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Opens a present blob for reading.
    pub fn open(&self, digest: &Digest) -> Result<File, Error> {
        let p = self.path(digest);
        File::open(&p).map_err(|e| Error::io(p, e))
    }

    /// Reads a present blob into memory, refusing blobs larger than `limit`.
    pub fn read(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, Error> {
        let mut buf = Vec::new();
        self.open(digest)?
            .take(limit.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(self.path(digest), e))?;
        if buf.len() as u64 > limit {
            return Err(Error::TooLarge {
                what: format!("blob {digest}"),
                limit,
            });
        }
        Ok(buf)
    }

    /// A new temporary file inside the store (same filesystem, so it can be renamed in).
    pub fn temp_file(&self) -> Result<NamedTempFile, Error> {
        let dir = self.root.join("tmp");
        NamedTempFile::new_in(&dir).map_err(|e| Error::io(dir, e))
    }

    /// Syncs `tmp` and renames it to the blob path of `digest`. The caller has verified it.
    pub fn commit(&self, tmp: NamedTempFile, digest: &Digest) -> Result<PathBuf, Error> {
        let dest = self.path(digest);
        tmp.as_file()
            .sync_all()
            .map_err(|e| Error::io(tmp.path(), e))?;
        tmp.persist(&dest).map_err(|e| Error::io(&dest, e.error))?;
        Ok(dest)
    }

    /// Copies `reader` into the store, verifying `digest` and `size` while streaming. On any
    /// mismatch nothing is left in the store. A no-op when the blob is already present.
    pub fn import(&self, reader: impl Read, digest: &Digest, size: u64) -> Result<PathBuf, Error> {
        if self.contains_sized(digest, size) {
            return Ok(self.path(digest));
        }
        let mut writer = self.writer(digest, size)?;
        copy_into(reader, &mut writer)?;
        writer.commit()
    }

    /// Copies `reader` into the store under the SHA-256 digest of its content, returning the
    /// digest and size (for sources without descriptors, such as docker archives).
    pub fn import_unverified(&self, reader: impl Read) -> Result<(Digest, u64), Error> {
        let mut writer = BlobWriter::new(self, Algorithm::Sha256, None)?;
        copy_into(reader, &mut writer)?;
        let (tmp, digest, size) = writer.finish();
        if !self.contains_sized(&digest, size) {
            self.commit(tmp, &digest)?;
        }
        Ok((digest, size))
    }

    /// A writer for the blob `digest` of `size` bytes, fed piece by piece (from a stream) and
    /// checked as it goes; it reaches the store only through [`BlobWriter::commit`].
    pub fn writer(&self, digest: &Digest, size: u64) -> Result<BlobWriter<'_>, Error> {
        BlobWriter::new(self, digest.algorithm(), Some((digest.clone(), size)))
    }
}

/// A blob on its way into a [`BlobStore`]: written to a temporary file in the store and hashed
/// as it arrives. More bytes than expected are refused at once; dropping it leaves nothing.
pub struct BlobWriter<'a> {
    store: &'a BlobStore,
    tmp: NamedTempFile,
    hasher: Hasher,
    written: u64,
    expected: Option<(Digest, u64)>,
}

impl<'a> BlobWriter<'a> {
    fn new(
        store: &'a BlobStore,
        algorithm: Algorithm,
        expected: Option<(Digest, u64)>,
    ) -> Result<BlobWriter<'a>, Error> {
        Ok(BlobWriter {
            store,
            tmp: store.temp_file()?,
            hasher: Hasher::new(algorithm),
            written: 0,
            expected,
        })
    }

    /// Appends `bytes`.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.written += bytes.len() as u64;
        if let Some((digest, size)) = &self.expected {
            if self.written > *size {
                return Err(Error::BlobSizeMismatch {
                    digest: digest.clone(),
                    expected: *size,
                    actual: self.written,
                });
            }
        }
        self.hasher.update(bytes);
        self.tmp
            .write_all(bytes)
            .map_err(|e| Error::io(self.tmp.path().to_owned(), e))
    }

    /// Checks the size and digest and moves the blob into the store.
    pub fn commit(self) -> Result<PathBuf, Error> {
        let store = self.store;
        let expected = self.expected.clone();
        let (tmp, actual, actual_size) = self.finish();
        let Some((digest, size)) = expected else {
            return store.commit(tmp, &actual);
        };
        if actual_size != size {
            return Err(Error::BlobSizeMismatch {
                digest,
                expected: size,
                actual: actual_size,
            });
        }
        if actual != digest {
            return Err(Error::BlobDigestMismatch { digest, actual });
        }
        store.commit(tmp, &digest)
    }

    fn finish(self) -> (NamedTempFile, Digest, u64) {
        (self.tmp, self.hasher.finish(), self.written)
    }
}

/// Feeds `reader` into `writer` to its end.
fn copy_into(mut reader: impl Read, writer: &mut BlobWriter<'_>) -> Result<(), Error> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => writer.write(buf.get(..n).unwrap_or_default())?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let what = writer
                    .expected
                    .as_ref()
                    .map_or_else(|| "blob".to_owned(), |(d, _)| format!("blob {d}"));
                return Err(Error::io(what, e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_entries(store: &BlobStore) -> usize {
        std::fs::read_dir(store.root().join("tmp")).unwrap().count()
    }

    #[test]
    fn imports_verified_blob_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path()).unwrap();
        let d = Digest::sha256_of(b"hello");
        assert!(!store.contains(&d));
        let p = store.import(&b"hello"[..], &d, 5).unwrap();
        assert_eq!(p, dir.path().join("sha256").join(d.hex()));
        assert!(store.contains(&d));
        assert_eq!(store.read(&d, 100).unwrap(), b"hello");
        assert!(store.read(&d, 2).is_err());
        // Present: no-op.
        store.import(&b"ignored"[..], &d, 5).unwrap();
        assert_eq!(tmp_entries(&store), 0);
    }

    #[test]
    fn corrupted_blob_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path()).unwrap();
        let d = Digest::sha256_of(b"hello");
        let err = store.import(&b"hellO"[..], &d, 5).unwrap_err();
        assert!(matches!(err, Error::BlobDigestMismatch { .. }), "{err}");
        assert!(err.to_string().contains(&d.to_string()));
        let err = store.import(&b"hello!"[..], &d, 5).unwrap_err();
        assert!(matches!(err, Error::BlobSizeMismatch { .. }), "{err}");
        let err = store.import(&b"hell"[..], &d, 5).unwrap_err();
        assert!(matches!(err, Error::BlobSizeMismatch { .. }), "{err}");
        assert!(!store.contains(&d));
        assert_eq!(tmp_entries(&store), 0);
    }

    #[test]
    fn import_unverified_names_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path()).unwrap();
        let (d, n) = store.import_unverified(&b"abc"[..]).unwrap();
        assert_eq!(d, Digest::sha256_of(b"abc"));
        assert_eq!(n, 3);
        assert!(store.contains_sized(&d, 3));
    }
}
