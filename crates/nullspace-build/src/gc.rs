//! Garbage collection of the data dir's shared stores: layer blobs, the rootfs cache and the
//! owners' build-context blobs.
//!
//! What a ready template needs is never removed: its source image's layer and config blobs
//! (steps on the template hand that image to BuildKit), and its rootfs (cache entries are hard
//! links to artifacts, so only entries no artifact shares take space of their own). Everything
//! else is a cache: used files are touched, and a sweep removes the least recently used ones
//! while a store is over its size limit, and any unused longer than the retention period. Files
//! younger than `min_age` always stay, so a build that just stored or reused one finds it.
//! A retry whose blobs were collected ends with `file_upload_error` (context) or
//! `rebuild_required` (template base), never a crash.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::artifact::read_document;
use crate::data_dir::DataDir;
use crate::error::BuildError;
use crate::store::Store;

/// How much each store may hold, and for how long unused files stay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Layer and config blobs (bytes on disk).
    pub max_layer_bytes: u64,
    /// Rootfs cache entries no artifact shares.
    pub max_rootfs_cache_bytes: u64,
    /// All owners' build-context blobs together.
    pub max_context_bytes: u64,
    /// Files used more recently than this are never removed.
    pub min_age: Duration,
    /// Unreferenced files unused for longer than this are removed whatever the sizes.
    pub max_unused: Duration,
}

impl Default for Retention {
    /// 64 GiB of layers, 64 GiB of cached rootfs images, 32 GiB of contexts; one hour minimum,
    /// 30 days maximum.
    fn default() -> Self {
        Retention {
            max_layer_bytes: 64 << 30,
            max_rootfs_cache_bytes: 64 << 30,
            max_context_bytes: 32 << 30,
            min_age: Duration::from_secs(3600),
            max_unused: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// What a sweep removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SweepReport {
    /// Files removed.
    pub files_removed: u64,
    /// Bytes on disk freed.
    pub bytes_freed: u64,
    /// Files kept because a ready template needs them.
    pub files_referenced: u64,
}

/// One removable file.
struct Candidate {
    paths: Vec<PathBuf>,
    bytes: u64,
    used: SystemTime,
}

/// Marks `path` as used now (its modification time), so the sweep keeps it longest.
pub fn touch(path: &Path) {
    // futimens needs ownership, not write permission: blobs stay read-only.
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// Sweeps the stores of `data` by `retention`.
pub fn sweep(
    data: &DataDir,
    store: &Store,
    retention: &Retention,
) -> Result<SweepReport, BuildError> {
    let now = SystemTime::now();
    let mut report = SweepReport::default();
    let (layers, cache_keys) = referenced(data, store)?;

    // Layer and config blobs, named by their hex digest.
    let mut blobs = Vec::new();
    let mut blob_total = 0;
    for (path, meta) in files_in(&data.blobs().join("sha256")) {
        let bytes = on_disk(&meta);
        blob_total += bytes;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| layers.contains(&format!("sha256:{n}"))) {
            report.files_referenced += 1;
            continue;
        }
        blobs.push(Candidate {
            paths: vec![path],
            bytes,
            used: used_at(&meta),
        });
    }
    collect(
        blobs,
        blob_total,
        retention.max_layer_bytes,
        retention,
        now,
        &mut report,
    );

    // Rootfs cache: `<key>.ext4` with its `<key>.json`; only entries no artifact links to count.
    let mut cached = Vec::new();
    let mut cache_total = 0;
    for (path, meta) in files_in(&data.rootfs_cache()) {
        if path.extension().is_none_or(|e| e != "ext4") {
            continue;
        }
        let key = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if meta.nlink() > 1 || cache_keys.contains(&key) {
            report.files_referenced += 1;
            continue;
        }
        let bytes = on_disk(&meta);
        cache_total += bytes;
        cached.push(Candidate {
            paths: vec![path.clone(), path.with_extension("json")],
            bytes,
            used: used_at(&meta),
        });
    }
    collect(
        cached,
        cache_total,
        retention.max_rootfs_cache_bytes,
        retention,
        now,
        &mut report,
    );

    // Build-context blobs of every owner (`<owner>/sha256/<hex>`), one budget for all.
    let mut contexts = Vec::new();
    let mut context_total = 0;
    for owner in dirs_in(&data.context_blobs()) {
        for (path, meta) in files_in(&owner.join("sha256")) {
            let bytes = on_disk(&meta);
            context_total += bytes;
            contexts.push(Candidate {
                paths: vec![path],
                bytes,
                used: used_at(&meta),
            });
        }
    }
    collect(
        contexts,
        context_total,
        retention.max_context_bytes,
        retention,
        now,
        &mut report,
    );

    // Downloads and uploads a crash left half-written.
    let temporary = [data.blobs().join("tmp")]
        .into_iter()
        .chain(dirs_in(&data.context_blobs()).map(|o| o.join("tmp")));
    for dir in temporary {
        for (path, meta) in files_in(&dir) {
            if age(now, used_at(&meta)) > retention.min_age.max(Duration::from_secs(24 * 3600)) {
                remove(&[path], on_disk(&meta), &mut report);
            }
        }
    }
    Ok(report)
}

/// The blob digests and rootfs cache keys that ready templates need.
fn referenced(
    data: &DataDir,
    store: &Store,
) -> Result<(HashSet<String>, HashSet<String>), BuildError> {
    let mut digests = HashSet::new();
    let mut cache_keys = HashSet::new();
    for artifact in store.ready_artifact_dirs()? {
        let dir = PathBuf::from(&artifact);
        // Only artifacts inside this data dir count (the database could name anything).
        if !dir.starts_with(data.templates()) {
            continue;
        }
        let Ok(document) = read_document(&dir) else {
            continue;
        };
        digests.insert(document.source.config_digest.clone());
        digests.extend(document.source.layers.iter().map(|l| l.digest.clone()));
        cache_keys.insert(document.rootfs.cache_key.clone());
    }
    Ok((digests, cache_keys))
}

/// Removes the least recently used `candidates` while `total` is over `limit`, and those unused
/// for longer than the retention period; never one younger than `min_age`.
fn collect(
    mut candidates: Vec<Candidate>,
    mut total: u64,
    limit: u64,
    retention: &Retention,
    now: SystemTime,
    report: &mut SweepReport,
) {
    candidates.sort_by_key(|c| c.used);
    for candidate in candidates {
        let idle = age(now, candidate.used);
        if idle < retention.min_age {
            continue;
        }
        if total > limit || idle > retention.max_unused {
            remove(&candidate.paths, candidate.bytes, report);
            total = total.saturating_sub(candidate.bytes);
        }
    }
}

fn remove(paths: &[PathBuf], bytes: u64, report: &mut SweepReport) {
    let mut removed = false;
    for path in paths {
        match std::fs::remove_file(path) {
            Ok(()) => removed = true,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!("gc: {}: {error}", path.display()),
        }
    }
    if removed {
        report.files_removed += 1;
        report.bytes_freed += bytes;
    }
}

fn age(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or_default()
}

fn used_at(meta: &std::fs::Metadata) -> SystemTime {
    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Bytes a file takes on disk (rootfs images are sparse).
fn on_disk(meta: &std::fs::Metadata) -> u64 {
    meta.blocks().saturating_mul(512)
}

/// Regular files directly in `dir` (none if it does not exist).
fn files_in(dir: &Path) -> impl Iterator<Item = (PathBuf, std::fs::Metadata)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let meta = std::fs::symlink_metadata(entry.path()).ok()?;
            meta.is_file().then(|| (entry.path(), meta))
        })
}

/// Directories directly in `dir`.
fn dirs_in(dir: &Path) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
}
