//! The rootfs cache: a written `rootfs.ext4` kept by the key of what made it (the exact
//! layer chain, the writer options and version), so an unchanged rebuild links it instead of
//! writing it again. Entries are hard links: artifacts are immutable.

use std::path::Path;

use sha2::{Digest as _, Sha256};

use nullspace_rootfs::RootfsOptions;

use crate::artifact::LayerRecord;
use crate::error::{io_at, BuildError};

/// Version of the rootfs cache key recipe; bump when what goes into a rootfs changes.
const ROOTFS_RECIPE: &str = "nullspace-rootfs-v1";

/// The rootfs cache key: the exact layer chain, how it is written, and the writer's version.
/// Never a tag: `:latest` moving to new content changes the chain.
pub(crate) fn rootfs_cache_key(layers: &[LayerRecord], options: &RootfsOptions) -> String {
    let mut hasher = Sha256::new();
    hasher.update(ROOTFS_RECIPE);
    hasher.update([0]);
    hasher.update(nullspace_ext4::WRITER_VERSION);
    for layer in layers {
        hasher.update([0]);
        hasher.update(&layer.digest);
        hasher.update([0]);
        hasher.update(&layer.media_type);
        hasher.update([0]);
        hasher.update(layer.diff_id.as_deref().unwrap_or(""));
    }
    hasher.update(format!(
        "\0min={:?}\0journal={}",
        options.min_size_bytes, !options.no_journal
    ));
    hex::encode(hasher.finalize())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CachedRootfs {
    size_bytes: u64,
    entries: u64,
}

/// Links a cached rootfs into the staging dir; `None` (a miss) when absent or unreadable.
pub(crate) fn read_cached_rootfs(
    cached: &Path,
    summary: &Path,
    staged: &Path,
) -> Option<(u64, u64)> {
    let facts: CachedRootfs = serde_json::from_slice(&std::fs::read(summary).ok()?).ok()?;
    let actual = std::fs::metadata(cached).ok()?.len();
    if actual != facts.size_bytes {
        return None;
    }
    std::fs::hard_link(cached, staged).ok()?;
    crate::gc::touch(cached);
    Some((facts.size_bytes, facts.entries))
}

/// Adds a freshly written rootfs to the cache (a hard link: artifacts are immutable).
pub(crate) fn store_cached_rootfs(
    staged: &Path,
    cached: &Path,
    summary: &Path,
    size_bytes: u64,
    entries: u64,
) -> Result<(), BuildError> {
    let mut permissions = std::fs::metadata(staged)
        .map_err(io_at(staged))?
        .permissions();
    permissions.set_readonly(true);
    std::fs::set_permissions(staged, permissions).map_err(io_at(staged))?;
    let temporary = cached.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    std::fs::hard_link(staged, &temporary).map_err(io_at(&temporary))?;
    std::fs::rename(&temporary, cached).map_err(io_at(cached))?;
    let json = serde_json::to_vec(&CachedRootfs {
        size_bytes,
        entries,
    })
    .map_err(|e| BuildError::Internal(e.to_string()))?;
    let temporary = summary.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&temporary, json).map_err(io_at(&temporary))?;
    std::fs::rename(&temporary, summary).map_err(io_at(summary))
}
