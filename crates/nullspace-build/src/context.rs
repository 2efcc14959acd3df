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

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use nullspace_oci::{BlobStore, Digest};

use crate::data_dir::DataDir;
use crate::error::{io_at, BuildError};

/// Most entries one context may have.
pub const MAX_CONTEXT_ENTRIES: usize = 200_000;

/// How a file's blob reached the server for this build, as the client reports it (it is the
/// one that asked which blobs were missing). Drives the `file_blob` cache entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextManifest {
    /// The entries, in any order.
    pub entries: Vec<ContextEntry>,
}

/// What a [`ContextManifest::materialize`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextStats {
    /// Regular files.
    pub files: usize,
    /// Bytes of file content.
    pub bytes: u64,
}

fn invalid(index: usize, message: impl Into<String>) -> BuildError {
    BuildError::InvalidRequest {
        field: format!("build_context.entries[{index}]"),
        message: message.into(),
    }
}

/// Checks a context path: relative, `/`-separated, no empty, `.` or `..` component, no NUL or
/// control characters.
fn check_path(index: usize, path: &str) -> Result<(), BuildError> {
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
    pub fn validate(&self) -> Result<(), BuildError> {
        if self.entries.len() > MAX_CONTEXT_ENTRIES {
            return Err(BuildError::InvalidRequest {
                field: "build_context.entries".into(),
                message: format!(
                    "{} entries; at most {MAX_CONTEXT_ENTRIES} are accepted",
                    self.entries.len()
                ),
            });
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
                    parse_digest(digest).map_err(|message| invalid(index, message))?;
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
    pub fn cache_decisions(&self) -> Vec<(&'static str, Option<&'static str>, String)> {
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
                UploadStatus::Reused => decisions.push(("hit", None, subject)),
                UploadStatus::Uploaded => {
                    decisions.push(("miss", Some("missing_or_incompatible"), subject.clone()));
                    decisions.push(("stored", None, subject));
                }
                UploadStatus::Forced => {
                    let reason = match reason.as_deref() {
                        Some("whole_build_skip_cache") => "whole_build_skip_cache",
                        Some("builder_cache_boundary") => "builder_cache_boundary",
                        _ => "force_upload",
                    };
                    decisions.push(("bypass", Some(reason), subject.clone()));
                    decisions.push(("stored", None, subject));
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

    /// Writes the context into `dest` (which must not exist), its files copied from `blobs`.
    /// Call [`ContextManifest::validate`] first. A missing or altered blob is a
    /// [`BuildError::FileUpload`] naming the path.
    pub fn materialize(
        &self,
        blobs: &ContextBlobs,
        dest: &Path,
    ) -> Result<ContextStats, BuildError> {
        self.validate()?;
        DirBuilder::new()
            .mode(0o755)
            .create(dest)
            .map_err(io_at(dest))?;
        let mut entries: Vec<&ContextEntry> = self.entries.iter().collect();
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
                    let parsed =
                        parse_digest(digest).map_err(|message| BuildError::FileUpload {
                            path: path.clone(),
                            message,
                        })?;
                    let mut source = blobs.open_blob(&parsed, *size).map_err(|message| {
                        BuildError::FileUpload {
                            path: path.clone(),
                            message,
                        }
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
                    let copied =
                        std::io::copy(&mut source, &mut hashing).map_err(io_at(&target))?;
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
}

fn check_mode(index: usize, mode: u32) -> Result<(), BuildError> {
    if mode & !0o777 != 0 {
        return Err(invalid(
            index,
            format!("mode {mode:o}: only permission bits (0..=0777) are accepted"),
        ));
    }
    Ok(())
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

/// `.dockerignore` rules as Docker applies them: patterns in order, the last match wins, `!`
/// re-includes, `*`, `?` and `[...]` stay within a path segment, `**` spans segments, and a
/// pattern matching a directory excludes everything beneath it.
#[derive(Clone, Debug, Default)]
pub struct DockerIgnore {
    rules: Vec<(Vec<u8>, bool)>,
}

impl DockerIgnore {
    /// Parses the file's text.
    pub fn parse(text: &str) -> DockerIgnore {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negated, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let cleaned = clean_pattern(pattern);
            if !cleaned.is_empty() {
                rules.push((cleaned.into_bytes(), negated));
            }
        }
        DockerIgnore { rules }
    }

    /// The rules of `root/.dockerignore` (none when it does not exist).
    pub fn load(root: &Path) -> Result<DockerIgnore, BuildError> {
        let path = root.join(".dockerignore");
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(DockerIgnore::parse(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DockerIgnore::default()),
            Err(e) => Err(io_at(&path)(e)),
        }
    }

    /// Whether some rule re-includes (then excluded directories must still be walked).
    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|(_, negated)| *negated)
    }

    /// Whether the context path `path` (`a/b.txt`) is excluded.
    pub fn excluded(&self, path: &str) -> bool {
        let mut prefixes = Vec::new();
        for (i, c) in path.char_indices() {
            if c == '/' {
                prefixes.push(&path[..i]);
            }
        }
        prefixes.push(path);
        let mut excluded = false;
        for (pattern, negated) in &self.rules {
            if prefixes.iter().any(|p| glob_match(pattern, p.as_bytes())) {
                excluded = !negated;
            }
        }
        excluded
    }
}

/// A pattern as Docker cleans it: no leading `/` or `./`, no empty or `.` segments.
fn clean_pattern(pattern: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in pattern.split('/') {
        match part {
            "" | "." => {}
            // Kept: no context path has a `..` part, so such a pattern matches nothing.
            other => parts.push(other),
        }
    }
    parts.join("/")
}

/// Glob matching of a whole path: `*` and `?` never cross `/`, `**` does, `[...]` classes
/// (`!`/`^` negate, `a-z` ranges), `\` escapes.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.first() {
        None => text.is_empty(),
        Some(b'*') if pattern.get(1) == Some(&b'*') => {
            let rest = &pattern[2..];
            if let Some(after_slash) = rest.strip_prefix(b"/") {
                // `**/` is zero or more whole segments.
                glob_match(after_slash, text)
                    || text
                        .iter()
                        .enumerate()
                        .any(|(i, &c)| c == b'/' && glob_match(after_slash, &text[i + 1..]))
            } else {
                (0..=text.len()).any(|i| glob_match(rest, &text[i..]))
            }
        }
        Some(b'*') => {
            let rest = &pattern[1..];
            let segment_end = text.iter().position(|&c| c == b'/').unwrap_or(text.len());
            (0..=segment_end).any(|i| glob_match(rest, &text[i..]))
        }
        Some(b'?') => {
            matches!(text.first(), Some(&c) if c != b'/') && glob_match(&pattern[1..], &text[1..])
        }
        Some(b'[') => {
            let Some(end) = pattern.iter().skip(1).position(|&c| c == b']') else {
                return text.first() == Some(&b'[') && glob_match(&pattern[1..], &text[1..]);
            };
            let class = &pattern[1..=end];
            let Some(&c) = text.first().filter(|&&c| c != b'/') else {
                return false;
            };
            let (negated, class) = match class.first() {
                Some(b'!' | b'^') => (true, &class[1..]),
                _ => (false, class),
            };
            let mut found = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    found |= (class[i]..=class[i + 2]).contains(&c);
                    i += 3;
                } else {
                    found |= class[i] == c;
                    i += 1;
                }
            }
            found != negated && glob_match(&pattern[end + 2..], &text[1..])
        }
        Some(b'\\') if pattern.len() > 1 => {
            text.first() == Some(&pattern[1]) && glob_match(&pattern[2..], &text[1..])
        }
        Some(&literal) => text.first() == Some(&literal) && glob_match(&pattern[1..], &text[1..]),
    }
}

/// A context collected from local files: its manifest, where each file is on disk, and what
/// `.dockerignore` left out.
#[derive(Clone, Debug, Default)]
pub struct LocalContext {
    /// The manifest (files marked `reused` until an upload says otherwise).
    pub manifest: ContextManifest,
    /// Local path of each file, by context path.
    pub files: BTreeMap<String, PathBuf>,
    /// Context paths `.dockerignore` excluded.
    pub ignored: Vec<String>,
    /// Context paths already in the manifest (overlapping sources add each once).
    seen: BTreeSet<String>,
}

impl LocalContext {
    /// Every file under `root` (a Dockerfile's context), `.dockerignore` applied, dotfiles
    /// included; sockets, pipes and devices are skipped.
    pub fn scan_tree(root: &Path) -> Result<LocalContext, BuildError> {
        let ignore = DockerIgnore::load(root)?;
        let mut context = LocalContext::default();
        context.walk(root, root, "", &ignore)?;
        Ok(context)
    }

    /// The copy sources `sources` (context paths under `root`), `.dockerignore` applied; a
    /// source that is missing or excluded is an error naming it.
    pub fn scan_paths(root: &Path, sources: &[String]) -> Result<LocalContext, BuildError> {
        let ignore = DockerIgnore::load(root)?;
        let mut context = LocalContext::default();
        for source in sources {
            let rel = source.trim_start_matches("./").trim_end_matches('/');
            if rel.is_empty() || rel == "." {
                // The whole context.
                context.walk(root, root, "", &ignore)?;
                continue;
            }
            if ignore.excluded(rel) {
                return Err(BuildError::FileUpload {
                    path: rel.to_string(),
                    message: format!("excluded by {}", root.join(".dockerignore").display()),
                });
            }
            let local = root.join(rel);
            let meta = std::fs::symlink_metadata(&local).map_err(|e| BuildError::FileUpload {
                path: rel.to_string(),
                message: format!("{}: {e}", local.display()),
            })?;
            let mut parent = String::new();
            for part in rel
                .split('/')
                .collect::<Vec<_>>()
                .split_last()
                .map(|(_, p)| p)
                .unwrap_or(&[])
            {
                parent = if parent.is_empty() {
                    part.to_string()
                } else {
                    format!("{parent}/{part}")
                };
                context.add_dir(&parent, &root.join(&parent))?;
            }
            context.add(root, rel, &local, &meta, &ignore)?;
        }
        Ok(context)
    }

    fn walk(
        &mut self,
        root: &Path,
        dir: &Path,
        prefix: &str,
        ignore: &DockerIgnore,
    ) -> Result<(), BuildError> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .map_err(io_at(dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_at(dir))?;
        names.sort();
        for name in names {
            let Some(name) = name.to_str().map(str::to_string) else {
                // Context paths are UTF-8 (JSON); such a file cannot be sent.
                self.ignored
                    .push(format!("{prefix}/{}", name.to_string_lossy()));
                continue;
            };
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let local = dir.join(&name);
            let meta = std::fs::symlink_metadata(&local).map_err(io_at(&local))?;
            self.add(root, &rel, &local, &meta, ignore)?;
        }
        Ok(())
    }

    fn add(
        &mut self,
        root: &Path,
        rel: &str,
        local: &Path,
        meta: &std::fs::Metadata,
        ignore: &DockerIgnore,
    ) -> Result<(), BuildError> {
        let excluded = ignore.excluded(rel);
        if excluded {
            self.ignored.push(rel.to_string());
        }
        let kind = meta.file_type();
        if kind.is_dir() {
            if excluded && !ignore.has_exceptions() {
                return Ok(());
            }
            if !excluded {
                self.add_dir(rel, local)?;
            }
            return self.walk(root, local, rel, ignore);
        }
        if excluded {
            return Ok(());
        }
        if kind.is_symlink() {
            let target = std::fs::read_link(local).map_err(io_at(local))?;
            if !self.seen.insert(rel.to_string()) {
                return Ok(());
            }
            self.manifest.entries.push(ContextEntry::Symlink {
                path: rel.to_string(),
                target: target.to_string_lossy().into_owned(),
            });
        } else if kind.is_file() {
            let mut file = std::fs::File::open(local).map_err(io_at(local))?;
            let mut hasher = Sha256::new();
            let size = std::io::copy(&mut file, &mut hasher).map_err(io_at(local))?;
            if !self.seen.insert(rel.to_string()) {
                return Ok(());
            }
            self.manifest.entries.push(ContextEntry::File {
                path: rel.to_string(),
                digest: format!("sha256:{:x}", hasher.finalize()),
                size,
                mode: meta.permissions().mode() & 0o777,
                upload: UploadStatus::Reused,
                reason: None,
            });
            self.files.insert(rel.to_string(), local.to_path_buf());
        }
        Ok(())
    }

    fn add_dir(&mut self, rel: &str, local: &Path) -> Result<(), BuildError> {
        if !self.seen.insert(rel.to_string()) {
            return Ok(());
        }
        let meta = std::fs::metadata(local).map_err(io_at(local))?;
        self.manifest.entries.push(ContextEntry::Dir {
            path: rel.to_string(),
            mode: meta.permissions().mode() & 0o777,
        });
        Ok(())
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
    fn dockerignore_follows_docker() {
        let ignore = DockerIgnore::parse(
            "# comment\n/secret.txt\n*.log\n!keep.log\nbuild/\n**/*.pyc\ndocs/[a-c]*.md\n",
        );
        for (path, excluded) in [
            ("secret.txt", true),
            ("a.log", true),
            ("keep.log", false),
            ("sub/a.log", false), // `*` stays in the root segment
            ("build", true),
            ("build/out/x", true), // beneath an excluded dir
            ("app/cache.pyc", true),
            ("cache.pyc", true),
            ("docs/api.md", true),
            ("docs/zeta.md", false),
            ("src/main.rs", false),
        ] {
            assert_eq!(ignore.excluded(path), excluded, "{path}");
        }
        assert!(ignore.has_exceptions());
    }

    #[test]
    fn scans_follow_dockerignore_and_keep_dotfiles() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("app/.cfg")).unwrap();
        std::fs::write(root.join("app/main.py"), "x").unwrap();
        std::fs::write(root.join("app/.cfg/env"), "y").unwrap();
        std::fs::write(root.join("app/skip.pyc"), "z").unwrap();
        std::fs::write(root.join(".dockerignore"), "**/*.pyc\n").unwrap();
        let tree = LocalContext::scan_tree(root).unwrap();
        let files: Vec<&str> = tree.files.keys().map(String::as_str).collect();
        assert_eq!(files, [".dockerignore", "app/.cfg/env", "app/main.py"]);
        assert_eq!(tree.ignored, ["app/skip.pyc"]);
        tree.manifest.validate().unwrap();
        let copied = LocalContext::scan_paths(root, &["./app/.cfg/env".into()]).unwrap();
        let paths: Vec<&str> = copied
            .manifest
            .entries
            .iter()
            .map(ContextEntry::path)
            .collect();
        assert_eq!(paths, ["app", "app/.cfg", "app/.cfg/env"]);
        // Overlapping sources add each path once; "." is the whole tree.
        let overlapping =
            LocalContext::scan_paths(root, &["app".into(), "app/main.py".into()]).unwrap();
        overlapping.manifest.validate().unwrap();
        let whole = LocalContext::scan_paths(root, &[".".into()]).unwrap();
        assert_eq!(whole.files.len(), tree.files.len());
        let error = LocalContext::scan_paths(root, &["app/skip.pyc".into()]).unwrap_err();
        assert!(error.to_string().contains("excluded"), "{error}");
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
        let stats = m.materialize(&blobs, &dest).unwrap();
        assert_eq!(stats.files, 1);
        // The same blob under many paths is written once and hard-linked.
        let many = manifest(
            (0..50)
                .map(|i| file(&format!("copies/{i}.py"), content))
                .collect(),
        );
        assert_eq!(many.total_bytes(), 50 * content.len() as u64);
        many.materialize(&blobs, &dir.path().join("many")).unwrap();
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
        let error = m
            .materialize(&blobs, &dir.path().join("ctx-damaged"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("damaged"), "{error}");
        assert_eq!(blobs.missing([&digest]).len(), 1);
        // Bob's build naming Alice's digest fails, naming the path.
        let error = m
            .materialize(&bob, &dir.path().join("ctx-bob"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("src/.hidden/app.py") && error.contains("not uploaded"),
            "{error}"
        );
    }
}
