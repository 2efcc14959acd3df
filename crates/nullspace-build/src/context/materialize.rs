//! Writing an uploaded context into a build's staging dir for BuildKit, from the owner's
//! blobs, each checked against its digest again on the way.

use std::collections::BTreeMap;
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use nullspace_api::{ContextEntry, ContextManifest};

use crate::error::{io_at, BuildError};

use super::blobs::{parse_digest, ContextBlobs, HashingWriter};

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
