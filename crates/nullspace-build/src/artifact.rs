//! The template artifact: `rootfs.ext4` and `template.json`, and its atomic publication.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use nullspace_rootfs::runtime::{OciMetadata, RuntimeDefaults};

use crate::error::{io_at, BuildError};

/// File name of the rootfs inside an artifact.
pub const ROOTFS_FILE: &str = "rootfs.ext4";
/// File name of the description inside an artifact.
pub const TEMPLATE_FILE: &str = "template.json";

/// Where the template came from, exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// `oci_import` for image imports.
    pub kind: String,
    /// The reference as the user gave it (or the selector's image).
    pub requested: String,
    /// Canonical reference.
    pub reference: String,
    /// Manifest digest the reference resolved to.
    pub manifest_digest: String,
    /// Config blob digest.
    pub config_digest: String,
    /// `os/arch[/variant]`.
    pub platform: String,
    /// Layers bottom-up.
    pub layers: Vec<LayerRecord>,
}

/// One layer of the source image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Blob digest.
    pub digest: String,
    /// Media type.
    pub media_type: String,
    /// Compressed size.
    pub size: u64,
    /// Uncompressed digest from the config.
    pub diff_id: Option<String>,
}

/// The rootfs file's facts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RootfsRecord {
    /// File name inside the artifact.
    pub path: String,
    /// Image size in bytes (apparent; sparse on disk).
    pub size_bytes: u64,
    /// Entries in the tree.
    pub entries: u64,
    /// ext4 writer version.
    pub writer_version: String,
    /// The rootfs cache key.
    pub cache_key: String,
}

/// Build options as recorded (`build_config`); secrets appear only as their kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuildConfigRecord {
    /// `native` for imports.
    pub build_backend: String,
    /// Minimum rootfs size in MiB, if asked.
    pub disk_mb: Option<u64>,
    /// vCPUs.
    pub cpu_count: Option<u32>,
    /// Memory in MiB.
    pub memory_mb: Option<u32>,
    /// Network during build steps.
    pub internet_access: bool,
    /// Whole-build cache bypass.
    pub skip_cache: bool,
    /// Kind of base-image credentials used (`basic`, `bearer`, `gcp`, `ecr`), never the
    /// credentials themselves.
    pub base_image_auth_kind: Option<String>,
}

/// `template.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TemplateDocument {
    /// Format version of this document.
    pub schema_version: u32,
    /// Build id (`tb_...`).
    pub build_id: String,
    /// Template id (`tmpl_...`).
    pub template_id: String,
    /// Template name.
    pub name: String,
    /// Tags pointed at this build when it was published.
    pub tags: Vec<String>,
    /// Where it came from.
    pub source: SourceRecord,
    /// Runtime defaults.
    pub runtime_defaults: RuntimeDefaults,
    /// OCI metadata kept as hints.
    pub oci_metadata: OciMetadata,
    /// The rootfs.
    pub rootfs: RootfsRecord,
    /// Options.
    pub build_config: BuildConfigRecord,
    /// Things skipped during import.
    pub warnings: Vec<String>,
    /// The snapshot of the ready VM (`None`: a rootfs-only template).
    #[serde(default)]
    pub snapshot: Option<crate::build_vm::SnapshotRecord>,
    /// RFC 3339 time of publication.
    pub created_at: String,
}

/// A build's private staging dir, published whole (removed on drop unless published), and
/// its scratch dir beside it for inputs that must never be published (uploaded contexts, a
/// parent's image layout), removed on drop in every case.
pub struct Staging {
    dir: PathBuf,
    scratch: PathBuf,
    keep: bool,
}

/// The scratch dir of build `build_id` under the staging parent.
pub fn scratch_dir(parent: &Path, build_id: &str) -> PathBuf {
    parent.join(format!("{build_id}.scratch"))
}

/// Removes a tree even where a directory's own mode forbids it (an uploaded context may hold
/// `0555` directories), never following symlinks.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Ok(()) => Ok(()),
        Err(_) => {
            make_writable(path);
            std::fs::remove_dir_all(path)
        }
    }
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            make_writable(&entry.path());
        }
    }
}

impl Staging {
    /// Creates `<staging>/<build_id>` (replacing leftovers of a crashed run with the same id).
    pub fn create(parent: &Path, build_id: &str) -> Result<Staging, BuildError> {
        let dir = parent.join(build_id);
        let scratch = scratch_dir(parent, build_id);
        for old in [&dir, &scratch] {
            remove_tree(old).map_err(io_at(old))?;
        }
        std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        Ok(Staging {
            dir,
            scratch,
            keep: false,
        })
    }

    /// The dir.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The scratch dir (created on first use); never part of the artifact.
    pub fn scratch(&self) -> Result<PathBuf, BuildError> {
        std::fs::create_dir_all(&self.scratch).map_err(io_at(&self.scratch))?;
        Ok(self.scratch.clone())
    }

    /// Writes `template.json`, then moves the whole staging dir to `destination` in one rename.
    /// After this the artifact is complete or absent, never partial.
    pub fn publish(
        &mut self,
        document: &TemplateDocument,
        destination: &Path,
    ) -> Result<PathBuf, BuildError> {
        let json_path = self.dir.join(TEMPLATE_FILE);
        let json = serde_json::to_vec_pretty(document)
            .map_err(|e| BuildError::Internal(format!("template.json: {e}")))?;
        write_synced(&json_path, &json)?;
        let rootfs = self.dir.join(ROOTFS_FILE);
        std::fs::File::open(&rootfs)
            .and_then(|f| f.sync_all())
            .map_err(io_at(&rootfs))?;
        std::fs::rename(&self.dir, destination).map_err(io_at(destination))?;
        if let Some(parent) = destination.parent() {
            std::fs::File::open(parent)
                .and_then(|f| f.sync_all())
                .map_err(io_at(parent))?;
        }
        self.keep = true;
        Ok(destination.to_path_buf())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = remove_tree(&self.scratch);
        if !self.keep {
            let _ = remove_tree(&self.dir);
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(io_at(path))?;
    file.write_all(bytes).map_err(io_at(path))?;
    file.sync_all().map_err(io_at(path))
}

/// Reads an artifact's `template.json`.
pub fn read_document(artifact_dir: &Path) -> Result<TemplateDocument, BuildError> {
    let path = artifact_dir.join(TEMPLATE_FILE);
    let bytes = std::fs::read(&path).map_err(io_at(&path))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| BuildError::Internal(format!("{}: {e}", path.display())))
}
