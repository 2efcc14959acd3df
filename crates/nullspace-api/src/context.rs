//! The uploaded build context as a request carries it (`build_context`): a manifest of paths
//! naming content-addressed file blobs, and the rules every manifest must follow. The server
//! checks them as strictly as a layer: relative paths without `..`, no duplicates, nothing
//! beneath a symlink or a file, permission bits only.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use utoipa::ToSchema;

use crate::enums::CacheStatus;
use crate::error::FieldError;

/// Most entries one context may have.
pub const MAX_CONTEXT_ENTRIES: usize = 200_000;

/// How a file's blob reached the server for this build, as the client reports it (it is the
/// one that asked which blobs were missing). Drives the `file_blob` cache entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UploadStatus {
    /// The server already had the blob; nothing was sent (a cache hit).
    #[default]
    Reused,
    /// The server lacked the blob and it was uploaded (a miss, then a store).
    Uploaded,
    /// Uploaded although the server had it (`force_upload`, `skip_cache`, or after the
    /// builder's `skip_cache()` boundary): a bypass.
    Forced,
}

/// One entry of an uploaded context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = BuildContextEntry)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ContextEntry {
    /// A regular file whose content is the blob `digest`.
    File {
        /// Path inside the context (`a/b.txt`).
        path: String,
        /// `sha256:<hex>` of the content.
        digest: String,
        /// Size in bytes.
        size: u64,
        /// Permission bits (`0o644`); setuid, setgid and sticky bits are refused.
        mode: u32,
        /// How the blob reached the server (reported by the client).
        #[serde(default)]
        upload: UploadStatus,
        /// Why a forced upload was forced: `force_upload`, `whole_build_skip_cache` or
        /// `builder_cache_boundary`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A directory (needed for empty ones and for their modes).
    Dir {
        /// Path inside the context.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// A symbolic link, kept as a link (BuildKit resolves it inside the context).
    Symlink {
        /// Path inside the context.
        path: String,
        /// The link's target, verbatim.
        target: String,
    },
}

impl ContextEntry {
    /// The entry's path inside the context.
    pub fn path(&self) -> &str {
        match self {
            ContextEntry::File { path, .. }
            | ContextEntry::Dir { path, .. }
            | ContextEntry::Symlink { path, .. } => path,
        }
    }
}

/// An uploaded build context: what a build request's `build_context` carries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = BuildContext)]
#[serde(deny_unknown_fields)]
pub struct ContextManifest {
    /// The entries, in any order.
    pub entries: Vec<ContextEntry>,
}

fn invalid(index: usize, message: impl Into<String>) -> FieldError {
    FieldError::new(format!("build_context.entries[{index}]"), message)
}

/// Checks a context path: relative, `/`-separated, no empty, `.` or `..` component, no NUL or
/// control characters.
fn check_path(index: usize, path: &str) -> Result<(), FieldError> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.len() > 4096
        || path.chars().any(char::is_control)
        || path
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == ".." || part.len() > 255);
    if bad {
        return Err(invalid(
            index,
            format!("path {path:?} must be relative, without empty, '.' or '..' parts"),
        ));
    }
    Ok(())
}

impl ContextManifest {
    /// Checks every entry; errors name the entry and what is wrong with it.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.entries.len() > MAX_CONTEXT_ENTRIES {
            return Err(FieldError::new(
                "build_context.entries",
                format!(
                    "{} entries; at most {MAX_CONTEXT_ENTRIES} are accepted",
                    self.entries.len()
                ),
            ));
        }
        let mut kinds: BTreeMap<&str, bool> = BTreeMap::new(); // path → is a directory
        let mut symlinks: BTreeSet<&str> = BTreeSet::new();
        for (index, entry) in self.entries.iter().enumerate() {
            let path = entry.path();
            check_path(index, path)?;
            match entry {
                ContextEntry::File {
                    digest,
                    mode,
                    reason,
                    ..
                } => {
                    check_blob_digest(digest).map_err(|message| invalid(index, message))?;
                    check_mode(index, *mode)?;
                    if let Some(reason) = reason {
                        if ![
                            "force_upload",
                            "whole_build_skip_cache",
                            "builder_cache_boundary",
                        ]
                        .contains(&reason.as_str())
                        {
                            return Err(invalid(index, format!("unknown reason {reason:?}")));
                        }
                    }
                }
                ContextEntry::Dir { mode, .. } => check_mode(index, *mode)?,
                ContextEntry::Symlink { target, .. } => {
                    if target.is_empty() || target.contains('\0') || target.len() > 4096 {
                        return Err(invalid(index, "a symlink target must be 1..4096 bytes"));
                    }
                    symlinks.insert(path);
                }
            }
            if kinds
                .insert(path, matches!(entry, ContextEntry::Dir { .. }))
                .is_some()
            {
                return Err(invalid(index, format!("{path:?} appears twice")));
            }
        }
        // No entry beneath a file or a symlink: writing it would follow the link.
        for (index, entry) in self.entries.iter().enumerate() {
            let path = entry.path();
            let mut parent = path;
            while let Some((head, _)) = parent.rsplit_once('/') {
                if symlinks.contains(head) {
                    return Err(invalid(
                        index,
                        format!("{path:?} is beneath the symlink {head:?}"),
                    ));
                }
                if kinds.get(head) == Some(&false) {
                    return Err(invalid(
                        index,
                        format!("{path:?} is beneath the file {head:?}"),
                    ));
                }
                parent = head;
            }
        }
        Ok(())
    }

    /// The digests of every file blob, each once.
    pub fn file_digests(&self) -> BTreeSet<&str> {
        self.entries
            .iter()
            .filter_map(|entry| match entry {
                ContextEntry::File { digest, .. } => Some(digest.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Whether a `COPY` source (`./dir`, `a/b.txt`, a glob) can match something here: an
    /// entry at that path or beneath it. Globs are left to BuildKit, which names what failed.
    pub fn covers(&self, source: &str) -> bool {
        let source = source.trim_start_matches("./").trim_end_matches('/');
        if source.is_empty() || source == "." || source.contains(['*', '?', '[']) {
            return !self.entries.is_empty();
        }
        self.entries.iter().any(|entry| {
            let path = entry.path();
            path == source
                || path
                    .strip_prefix(source)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }

    /// Records every file's blob as reused (a retry sends no files).
    pub fn mark_reused(&mut self) {
        for entry in &mut self.entries {
            if let ContextEntry::File { upload, reason, .. } = entry {
                *upload = UploadStatus::Reused;
                *reason = None;
            }
        }
    }

    /// The `file_blob` cache decisions of this context, one per distinct blob: `(status,
    /// reason, subject)` with the statuses and reasons of the build log (a miss is followed
    /// by its store).
    pub fn cache_decisions(&self) -> Vec<(CacheStatus, Option<&'static str>, String)> {
        let mut seen = BTreeSet::new();
        let mut decisions = Vec::new();
        for entry in &self.entries {
            let ContextEntry::File {
                path,
                digest,
                upload,
                reason,
                ..
            } = entry
            else {
                continue;
            };
            if !seen.insert(digest.as_str()) {
                continue;
            }
            let subject = format!("{path} ({digest})");
            match upload {
                UploadStatus::Reused => decisions.push((CacheStatus::Hit, None, subject)),
                UploadStatus::Uploaded => {
                    decisions.push((
                        CacheStatus::Miss,
                        Some("missing_or_incompatible"),
                        subject.clone(),
                    ));
                    decisions.push((CacheStatus::Stored, None, subject));
                }
                UploadStatus::Forced => {
                    let reason = match reason.as_deref() {
                        Some("whole_build_skip_cache") => "whole_build_skip_cache",
                        Some("builder_cache_boundary") => "builder_cache_boundary",
                        _ => "force_upload",
                    };
                    decisions.push((CacheStatus::Bypass, Some(reason), subject.clone()));
                    decisions.push((CacheStatus::Stored, None, subject));
                }
            }
        }
        decisions
    }

    /// Bytes of file content the context holds (each entry counted).
    pub fn total_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match e {
                ContextEntry::File { size, .. } => *size,
                _ => 0,
            })
            .fold(0u64, u64::saturating_add)
    }

    /// Regular files in the context.
    pub fn file_count(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e, ContextEntry::File { .. }))
            .count()
    }

    /// `sha256:` of the canonical manifest (entries sorted by path, upload reports left out):
    /// equal contexts have equal digests whatever order or cache state they were sent in.
    pub fn digest(&self) -> String {
        let mut entries: Vec<ContextEntry> = self
            .entries
            .iter()
            .map(|entry| match entry {
                ContextEntry::File {
                    path,
                    digest,
                    size,
                    mode,
                    ..
                } => ContextEntry::File {
                    path: path.clone(),
                    digest: digest.clone(),
                    size: *size,
                    mode: *mode,
                    upload: UploadStatus::Reused,
                    reason: None,
                },
                other => other.clone(),
            })
            .collect();
        entries.sort_by(|a, b| a.path().cmp(b.path()));
        let canonical = serde_json::to_vec(&entries).unwrap_or_default();
        format!("sha256:{:x}", Sha256::digest(&canonical))
    }
}

fn check_mode(index: usize, mode: u32) -> Result<(), FieldError> {
    if mode & !0o777 != 0 {
        return Err(invalid(
            index,
            format!("mode {mode:o}: only permission bits (0..=0777) are accepted"),
        ));
    }
    Ok(())
}

/// Checks a file blob digest: `sha256:` and 64 lower-case hex digits (the only algorithm file
/// blobs use).
pub fn check_blob_digest(text: &str) -> Result<(), String> {
    let hex = text
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("digest {text:?}: file blobs are sha256 (sha256:<64 hex>)"))?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!(
            "digest {text:?}: expected 64 lower-case hex digits after sha256:"
        ));
    }
    Ok(())
}
