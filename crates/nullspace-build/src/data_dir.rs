//! The one directory that holds all local state: blobs, caches, staging, artifacts, database.

use std::path::{Path, PathBuf};

use crate::error::BuildError;

/// Environment variable naming the data dir.
pub const DATA_DIR_ENV: &str = "NULLSPACE_DATA_DIR";

/// Layout of the data dir.
///
/// ```text
/// <root>/blobs/sha256/<hex>            content-addressed blobs (verified on the way in)
/// <root>/cache/rootfs/<key>.ext4       flattened rootfs images by layer chain + writer + size
/// <root>/staging/<build_id>/           a build's private scratch space, removed when it ends
/// <root>/templates/<build_id>/         published artifacts: rootfs.ext4, template.json
/// <root>/nullspace.db                  SQLite: builds, templates, tags
/// ```
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// `$NULLSPACE_DATA_DIR`, else the user's XDG data dir (`~/.local/share/nullspace`).
    pub fn from_env() -> Result<DataDir, BuildError> {
        let root = match std::env::var_os(DATA_DIR_ENV) {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => dirs::data_dir()
                .ok_or_else(|| BuildError::Config {
                    message: format!("no data dir: set {DATA_DIR_ENV} or HOME"),
                })?
                .join("nullspace"),
        };
        DataDir::open(&root)
    }

    /// Opens (creating as needed) the data dir at `root`. A data dir this creates is private
    /// (mode 0700, subdirectories too): it holds every owner's uploads and templates.
    pub fn open(root: &Path) -> Result<DataDir, BuildError> {
        use std::os::unix::fs::DirBuilderExt as _;
        let dir = DataDir {
            root: root.to_path_buf(),
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|source| BuildError::Io {
                path: root.to_path_buf(),
                source,
            })?;
        for sub in [
            dir.blobs(),
            dir.rootfs_cache(),
            dir.staging(),
            dir.templates(),
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&sub)
                .map_err(|source| BuildError::Io {
                    path: sub.clone(),
                    source,
                })?;
        }
        Ok(dir)
    }

    /// The data dir itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Content-addressed blob store.
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }
    /// Cache of flattened rootfs images.
    pub fn rootfs_cache(&self) -> PathBuf {
        self.root.join("cache").join("rootfs")
    }
    /// Uploaded build-context file blobs, one store per owner.
    pub fn context_blobs(&self) -> PathBuf {
        self.root.join("context-blobs")
    }
    /// Parent of the builds' staging dirs.
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }
    /// Parent of published artifacts.
    pub fn templates(&self) -> PathBuf {
        self.root.join("templates")
    }
    /// The SQLite database.
    pub fn database(&self) -> PathBuf {
        self.root.join("nullspace.db")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_new_data_dir_is_private() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("a/b/nullspace");
        let dir = DataDir::open(&root).unwrap();
        for path in [
            dir.root().to_path_buf(),
            dir.blobs(),
            dir.staging(),
            dir.templates(),
        ] {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
        }
        let store = crate::store::Store::open(&dir.database()).unwrap();
        drop(store);
        let mode = std::fs::metadata(dir.database())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "the database is {mode:o}");
    }
}
