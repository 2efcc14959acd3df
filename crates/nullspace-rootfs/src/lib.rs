//! Turns the layers of an OCI image into an ext4 rootfs, and its config into runtime defaults.
//!
//! Layers are applied bottom-up into the ext4 writer's in-memory tree; file data streams from
//! the decompressor straight into the image, once. Nothing is extracted onto the host, so no host
//! path can ever be reached by a hostile layer. The rules every entry must follow live in
//! [`rules`]; the layer semantics (replacement, merging, whiteouts) in the private `apply` module.
#![deny(missing_docs)]

mod apply;
mod decode;
mod error;
mod guard;
pub mod media;
pub mod rules;
pub mod runtime;
pub mod shell;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;

use nullspace_ext4::{Metadata, NodeKind, Options, Writer};

pub use apply::LayerStats;
pub use error::RootfsError;
pub use guard::ImportLimits;
pub use media::{layer_compression, Compression};

/// Directories every rootfs has, for `nullspace-init` to mount over at boot, with their modes.
pub const MOUNT_POINTS: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("dev/pts", 0o755),
    ("dev/shm", 0o1777),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("tmp", 0o1777),
];

/// One layer to apply: a blob on disk and what the manifest and config say about it.
#[derive(Clone, Debug)]
pub struct LayerInput {
    /// The blob's digest (names the layer in errors and progress).
    pub digest: String,
    /// The manifest's media type for it.
    pub media_type: String,
    /// The config's `diff_id` for it, checked against the uncompressed stream when present.
    pub diff_id: Option<String>,
    /// Where the blob is.
    pub path: PathBuf,
    /// The blob's size in bytes (for progress).
    pub size: u64,
}

/// How to write the rootfs.
#[derive(Clone, Debug, Default)]
pub struct RootfsOptions {
    /// Minimum image size in bytes (`disk_mb`).
    pub min_size_bytes: Option<u64>,
    /// Leave out the ext4 journal (it is on by default: the guest mounts its root read-write).
    pub no_journal: bool,
    /// Bounds on the layers' contents.
    pub limits: ImportLimits,
    /// Set to stop the import at the next read (a cancelled or timed-out build).
    pub stop: Option<Arc<AtomicBool>>,
}

/// Receives progress while layers apply. All methods have empty defaults.
pub trait ApplyProgress: Sync {
    /// Layer `index` starts applying.
    fn layer_started(&self, _index: usize, _layer: &LayerInput) {}
    /// `compressed_bytes` of layer `index` have been read so far.
    fn layer_progress(&self, _index: usize, _compressed_bytes: u64) {}
    /// Layer `index` is applied.
    fn layer_finished(&self, _index: usize, _stats: &LayerStats) {}
}

/// Progress that goes nowhere.
pub struct NoProgress;
impl ApplyProgress for NoProgress {}

/// What was written.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RootfsSummary {
    /// Size of the image file (apparent; the file is sparse).
    pub size_bytes: u64,
    /// Entries in the final tree (files, directories, symlinks; hard links count once per name).
    pub entries: u64,
    /// Per-layer counts, bottom-up.
    pub layers: Vec<LayerStats>,
    /// The ext4 writer version that wrote it (part of cache keys).
    pub writer_version: String,
}

/// Applies `layers` bottom-up and writes the ext4 image to `output`.
///
/// On error the partial image is left for the caller to delete with its staging area.
pub fn build_rootfs(
    layers: &[LayerInput],
    output: &Path,
    options: &RootfsOptions,
    progress: &dyn ApplyProgress,
) -> Result<RootfsSummary, RootfsError> {
    let io_error = |source| RootfsError::Io {
        path: output.to_path_buf(),
        source,
    };
    let file = File::create(output).map_err(io_error)?;
    let ext4_options = Options {
        min_size_bytes: options.min_size_bytes,
        journal: !options.no_journal,
        ..Options::default()
    };
    let mut writer = Writer::create(file, ext4_options).map_err(|source| RootfsError::Ext4 {
        layer: "rootfs".into(),
        entry: "/".into(),
        source,
    })?;
    let root = writer.root();
    writer
        .set_metadata(
            root,
            Metadata {
                mode: 0o755,
                ..Metadata::default()
            },
        )
        .map_err(|source| RootfsError::Ext4 {
            layer: "rootfs".into(),
            entry: "/".into(),
            source,
        })?;
    let mut stats = Vec::with_capacity(layers.len());
    let mut usage = guard::Usage::default();
    for (index, layer) in layers.iter().enumerate() {
        progress.layer_started(index, layer);
        let layer_stats = apply_one(&mut writer, index, layer, options, &mut usage, progress)?;
        progress.layer_finished(index, &layer_stats);
        stats.push(layer_stats);
    }
    add_mount_points(&mut writer)?;
    let entries = writer.entry_count();
    let summary = writer.finish().map_err(|source| RootfsError::Ext4 {
        layer: "rootfs".into(),
        entry: "/".into(),
        source,
    })?;
    Ok(RootfsSummary {
        size_bytes: summary.size_bytes,
        entries,
        layers: stats,
        writer_version: nullspace_ext4::WRITER_VERSION.to_string(),
    })
}

fn apply_one(
    writer: &mut Writer,
    index: usize,
    layer: &LayerInput,
    options: &RootfsOptions,
    usage: &mut guard::Usage,
    progress: &dyn ApplyProgress,
) -> Result<LayerStats, RootfsError> {
    let compression = layer_compression(&layer.media_type, &layer.digest)?;
    let read_so_far = Arc::new(AtomicU64::new(0));
    let (stream, hasher) = decode::spawn_decoder(&layer.path, compression, read_so_far.clone())
        .map_err(|source| RootfsError::Io {
            path: layer.path.clone(),
            source,
        })?;
    let corrupt = |source| RootfsError::Corrupt {
        layer: layer.digest.clone(),
        compression: format!("{compression:?}").to_lowercase(),
        source,
    };
    let violation = Arc::new(Mutex::new(None));
    let result = std::thread::scope(|scope| {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reporter = {
            let done = done.clone();
            let read_so_far = read_so_far.clone();
            scope.spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    progress.layer_progress(index, read_so_far.load(Ordering::Relaxed));
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            })
        };
        let guarded = guard::TarGuard::new(
            stream,
            options.limits.clone(),
            usage.clone(),
            options.stop.clone(),
            violation.clone(),
        );
        let mut archive = tar::Archive::new(guarded);
        let applied = apply::LayerApplier::new(writer, &layer.digest).apply(&mut archive);
        let mut rest = archive.into_inner();
        // The diff_id covers the whole stream, including padding after the end-of-archive
        // (bounded by the guard).
        let drained = applied.and_then(|stats| {
            std::io::copy(&mut rest, &mut std::io::sink()).map_err(corrupt)?;
            Ok(stats)
        });
        *usage = rest.usage();
        drop(rest);
        done.store(true, Ordering::Relaxed);
        let _ = reporter.join();
        drained
    });
    // The guard's own verdict wins over however the tar parser reported it.
    let result = result.map_err(|error| {
        if options
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
        {
            return RootfsError::Stopped;
        }
        match violation.lock().ok().and_then(|mut v| v.take()) {
            Some(v) => RootfsError::Rejected {
                layer: layer.digest.clone(),
                entry: v.entry,
                rule: v.rule,
            },
            None => error,
        }
    });
    let diff_id = hasher.join().map_err(|_| RootfsError::Corrupt {
        layer: layer.digest.clone(),
        compression: format!("{compression:?}").to_lowercase(),
        source: std::io::Error::other("decoder thread panicked"),
    })?;
    let stats = result?;
    progress.layer_progress(index, read_so_far.load(Ordering::Relaxed));
    if let Some(expected) = &layer.diff_id {
        if *expected != diff_id {
            return Err(RootfsError::DiffIdMismatch {
                layer: layer.digest.clone(),
                expected: expected.clone(),
                actual: diff_id,
            });
        }
    }
    Ok(stats)
}

/// Creates the mount points `nullspace-init` needs, where the image has none (an image's own
/// directory, or a symlink it put there, is kept).
fn add_mount_points(writer: &mut Writer) -> Result<(), RootfsError> {
    for (path, mode) in MOUNT_POINTS {
        let mut dir = writer.root();
        let mut missing_parent = false;
        let components: Vec<&str> = path.split('/').collect();
        let (last, parents) = components.split_last().unwrap_or((&"", &[]));
        for part in parents {
            match writer.lookup(dir, part.as_bytes()) {
                Some(node) if writer.kind(node) == NodeKind::Directory => dir = node,
                _ => missing_parent = true,
            }
        }
        if missing_parent || writer.lookup(dir, last.as_bytes()).is_some() {
            continue;
        }
        writer
            .create_dir(
                dir,
                last.as_bytes(),
                Metadata {
                    mode: *mode,
                    ..Metadata::default()
                },
            )
            .map_err(|source| RootfsError::Ext4 {
                layer: "rootfs".into(),
                entry: format!("/{path}"),
                source,
            })?;
    }
    Ok(())
}
