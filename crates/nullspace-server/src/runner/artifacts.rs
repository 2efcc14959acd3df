//! Artifacts and context blobs across hosts: a worker sends what it published to object
//! storage before the build is recorded `ready` (so every host that sees it ready can fetch it);
//! a host that needs a template it did not build (a `from_template` parent, a sandbox) fetches
//! it into its data dir, where it stays in a size-limited, least-recently-used cache.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nullspace_api::{LogKind, LogLevel, LogPhase};

use crate::entry::entry;
use crate::error::ApiError;
use crate::store::BuildRecord;

use super::Runner;

impl Runner {
    /// Where artifacts and context blobs are shared between hosts, if anywhere.
    pub fn objects(&self) -> Option<&nullspace_build::object_storage::ObjectStorage> {
        self.objects.as_ref()
    }

    /// Fetches the blobs of `manifest` that this host lacks from object storage (uploaded to an
    /// API process on another host), each checked against its digest.
    pub(super) async fn fetch_context_blobs(
        &self,
        owner: &str,
        manifest: &nullspace_api::ContextManifest,
    ) -> Result<(), nullspace_build::BuildError> {
        let Some(objects) = &self.objects else {
            return Ok(());
        };
        let blobs = nullspace_build::context::ContextBlobs::open(self.engine.data_dir(), owner)?;
        for text in manifest.file_digests() {
            let digest = nullspace_build::context::parse_digest(text)
                .map_err(nullspace_build::BuildError::Internal)?;
            if blobs.contains(&digest) {
                continue;
            }
            let mut upload = blobs.upload(digest, u64::MAX)?;
            let mut failure = None;
            let fetched = objects
                .get_context_blob(owner, text, &mut |bytes: &[u8]| {
                    upload.write(bytes).map_err(|e| e.to_string())
                })
                .await;
            if let Err(error) = fetched {
                failure = Some(error.to_string());
            } else if let Err(error) = upload.commit() {
                failure = Some(error.to_string());
            }
            if let Some(message) = failure {
                return Err(nullspace_build::BuildError::Internal(format!(
                    "build context file {text} is not on this worker and could not be fetched from object storage: {message}"
                )));
            }
        }
        Ok(())
    }

    /// Sends a freshly published artifact to object storage (when the server has one) and
    /// logs what it cost; the manifest digest to record, or why it failed. Runs off the
    /// runtime's workers.
    pub(super) fn share_artifact(
        &self,
        record: &BuildRecord,
        artifact_dir: &Path,
    ) -> Result<Option<String>, String> {
        let Some(objects) = &self.objects else {
            return Ok(None);
        };
        let started = std::time::Instant::now();
        let sent = tokio::runtime::Handle::current()
            .block_on(objects.upload_artifact(artifact_dir))
            .map_err(|e| {
                format!(
                    "sending the artifact to object storage: {}",
                    self.redact_host_paths(&e.to_string())
                )
            })?;
        let message = format!(
            "artifact sent to object storage in {:.1}s: {} chunk(s), {:.1} MiB sent for {:.1} MiB of files ({} chunk(s) were holes or already stored); manifest {}",
            started.elapsed().as_secs_f64(),
            sent.chunks_transferred,
            sent.transferred_bytes as f64 / 1048576.0,
            sent.logical_bytes as f64 / 1048576.0,
            sent.chunks_skipped,
            sent.manifest_digest
        );
        let note = entry(LogKind::Message, LogLevel::Info, message).phase(LogPhase::Finalize);
        if let Err(error) = self.store.append_entry(&record.id, &note) {
            tracing::warn!("build {}: log entry lost: {error}", record.id);
        }
        Ok(Some(sent.manifest_digest))
    }

    /// The artifact dir of ready build `build` on this host, fetched from object storage first
    /// when another host built it.
    pub async fn local_artifact(&self, build: &BuildRecord) -> Result<PathBuf, ApiError> {
        let data = self.engine.data_dir();
        let dir = data.templates().join(&build.id);
        let marker = data.root().join("artifact-cache").join(&build.id);
        if dir.join("template.json").exists() {
            // A fetched one was used: it becomes the most recently used.
            if marker.exists() {
                let _ = std::fs::File::options()
                    .append(true)
                    .open(&marker)
                    .and_then(|f| f.set_modified(SystemTime::now()));
            }
            return Ok(dir);
        }
        let manifest = build
            .result
            .as_ref()
            .and_then(|r| r.artifact_manifest.clone());
        let (Some(objects), Some(manifest)) = (&self.objects, manifest) else {
            // Not fetchable: the caller reports the missing artifact.
            return Ok(dir);
        };
        let _one_at_a_time = self.fetch_lock.lock().await;
        if dir.join("template.json").exists() {
            return Ok(dir);
        }
        let staging =
            data.staging()
                .join(format!("fetch-{}-{:08x}", build.id, rand::random::<u32>()));
        // The download writes files of gigabytes and the bookkeeping walks trees: off the
        // runtime's workers.
        let objects = objects.clone();
        let engine = self.engine.clone();
        let (wanted, destination) = (build.clone(), dir.clone());
        let cache_bytes = self.deployment.artifact_cache_bytes;
        let handle = tokio::runtime::Handle::current();
        let fetched = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let received =
                handle.block_on(objects.download_artifact(&manifest, &staging, &destination))?;
            tracing::info!(
                "build {}: fetched from object storage in {:.1}s ({} chunks, {} bytes)",
                wanted.id,
                started.elapsed().as_secs_f64(),
                received.chunks_transferred,
                received.transferred_bytes
            );
            if let Some(parent) = marker.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let _ = std::fs::write(&marker, manifest.as_bytes());
            record_fetched(&engine, &wanted, &destination);
            evict_fetched(engine.data_dir(), cache_bytes, &wanted.id);
            Ok::<_, nullspace_build::object_storage::StorageError>(())
        })
        .await
        .map_err(ApiError::internal)?;
        fetched.map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::BAD_GATEWAY,
                "artifact_fetch_failed",
                format!(
                    "template build {} was built on another host and could not be fetched: {}",
                    build.id,
                    self.redact_host_paths(&e.to_string())
                ),
            )
        })?;
        Ok(dir)
    }
}

/// Records a fetched artifact as a ready build of this host's engine, so that its garbage
/// collection keeps what the artifact needs.
fn record_fetched(engine: &nullspace_build::Engine, build: &BuildRecord, dir: &Path) {
    let store = engine.store();
    let now = nullspace_build::ids::now_rfc3339();
    let recorded = match store.mirror_template(&build.template_id) {
        Ok(()) => match store.start_build(&build.id, &build.template_id, &now) {
            Ok(()) => store.publish(&build.id, &build.template_id, &[], dir, &now),
            Err(error) => Err(error),
        },
        Err(error) => Err(error),
    };
    if let Err(error) = recorded {
        tracing::warn!(
            "build {}: recording the fetched artifact: {error}",
            build.id
        );
    }
}

/// Fetched artifacts used in the last hour are never evicted (a build or a sandbox may be
/// starting from one).
const EVICTION_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes the least recently used fetched artifacts (never `keep`, never one used within
/// [`EVICTION_MIN_AGE`]) while they take more than `limit` bytes. Artifacts built on this host
/// are never evicted.
fn evict_fetched(data: &nullspace_build::DataDir, limit: u64, keep: &str) {
    let markers = data.root().join("artifact-cache");
    let Ok(entries) = std::fs::read_dir(&markers) else {
        return;
    };
    let mut fetched: Vec<(SystemTime, String, u64)> = entries
        .flatten()
        .filter_map(|entry| {
            let id = entry.file_name().to_string_lossy().into_owned();
            let used = entry.metadata().ok()?.modified().ok()?;
            let size = allocated_bytes(&data.templates().join(&id));
            Some((used, id, size))
        })
        .collect();
    let mut total: u64 = fetched.iter().map(|(_, _, size)| size).sum();
    fetched.sort();
    for (used, id, size) in fetched {
        if total <= limit {
            break;
        }
        let recent = used.elapsed().map_or(true, |age| age < EVICTION_MIN_AGE);
        if id == keep || recent {
            continue;
        }
        tracing::info!("artifact cache: evicting fetched build {id} ({size} bytes)");
        let _ = nullspace_build::artifact::remove_tree(&data.templates().join(&id));
        let _ = std::fs::remove_file(markers.join(&id));
        total = total.saturating_sub(size);
    }
}

/// Bytes a tree takes on disk (sparse files count what they hold).
fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.blocks() * 512;
    }
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| allocated_bytes(&entry.path()))
        .sum()
}
