//! The snapshot cache: an unchanged rebuild takes the snapshot (and disk) of the artifact that
//! already holds one for the same key, without booting.

use super::*;
use crate::error::io_at;
use crate::events::{BuildEvent, EventSink};

/// Where the snapshot cache remembers which artifact holds the snapshot of a key.
pub fn cache_index(data_root: &Path, key: &str) -> PathBuf {
    data_root
        .join("vm/snapshots")
        .join(key.trim_start_matches("sha256:"))
}

/// The build VM stage of a build: the snapshot from the cache when an artifact already holds
/// one for the same key (an unchanged rebuild boots nothing), else a VM run.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn snapshot_stage(
    vm: &VmRuntime,
    data_root: &Path,
    build_id: &str,
    request: &crate::request::BuildRequest,
    runtime: &RuntimeDefaults,
    staging: &Path,
    rootfs_key: &str,
    network_allowed: bool,
    events: Arc<dyn EventSink>,
) -> Result<SnapshotRecord, BuildError> {
    let rootfs = staging.join(crate::artifact::ROOTFS_FILE);
    let (network, warning) = vm_network(request.internet_access, network_allowed);
    if let Some(message) = warning {
        events.event(BuildEvent::Warning {
            message: message.into(),
        });
    }
    let job = VmJob {
        rootfs: &rootfs,
        staging,
        runtime,
        name: &request.name,
        size: MachineSize {
            cpu_count: request.cpu_count.unwrap_or(DEFAULT_CPU_COUNT),
            memory_mb: request.memory_mb.unwrap_or(DEFAULT_MEMORY_MB),
        },
        rootfs_key,
        network,
    };
    let key = snapshot_key(vm, &job);
    let subject = format!("snapshot of {} ({key})", request.name);
    let cache = |status, reason| {
        events.event(BuildEvent::Cache {
            kind: nullspace_api::CacheKind::FinalArtifact,
            status,
            reason,
            subject: subject.clone(),
        })
    };
    let index = cache_index(data_root, &key);
    if request.skip_cache {
        cache(
            nullspace_api::CacheStatus::Bypass,
            Some("whole_build_skip_cache"),
        );
    } else if let Some(record) = reuse_snapshot(data_root, &index, &key, staging) {
        cache(nullspace_api::CacheStatus::Hit, None);
        return Ok(record);
    } else {
        cache(
            nullspace_api::CacheStatus::Miss,
            Some("missing_or_incompatible"),
        );
    }
    let record = run(vm, &job, key, events.clone()).await?;
    if !request.skip_cache {
        // Points at this build's artifact; a build that then fails leaves a pointer that
        // simply misses.
        if let Some(parent) = index.parent() {
            std::fs::create_dir_all(parent).map_err(io_at(parent))?;
        }
        std::fs::write(&index, build_id).map_err(io_at(&index))?;
        cache(nullspace_api::CacheStatus::Stored, None);
    }
    Ok(record)
}

/// Links the rootfs and snapshot of the artifact `index` names into `staging`, if that
/// artifact is still there and holds the snapshot of `key`.
fn reuse_snapshot(
    data_root: &Path,
    index: &Path,
    key: &str,
    staging: &Path,
) -> Option<SnapshotRecord> {
    let build_id = std::fs::read_to_string(index).ok()?;
    if !crate::ids::is_build_id(build_id.trim()) {
        return None;
    }
    let artifact = data_root.join("templates").join(build_id.trim());
    let document = crate::artifact::read_document(&artifact).ok()?;
    let record = document.snapshot.filter(|s| s.cache_key == key)?;
    let from = artifact.join(&record.path);
    let to = staging.join(SNAPSHOT_DIR);
    let result = (|| -> Result<(), BuildError> {
        std::fs::create_dir_all(&to).map_err(io_at(&to))?;
        for file in [
            files::MEMORY,
            files::STATE,
            files::MACHINE,
            files::KERNEL,
            files::INITRAMFS,
        ] {
            std::fs::hard_link(from.join(file), to.join(file)).map_err(io_at(&to.join(file)))?;
        }
        let rootfs = staging.join(crate::artifact::ROOTFS_FILE);
        let linked = staging.join("rootfs.ext4.cached");
        std::fs::hard_link(artifact.join(crate::artifact::ROOTFS_FILE), &linked)
            .map_err(io_at(&linked))?;
        std::fs::rename(&linked, &rootfs).map_err(io_at(&rootfs))
    })();
    match result {
        Ok(()) => Some(record),
        Err(_) => {
            let _ = std::fs::remove_dir_all(&to);
            None
        }
    }
}
