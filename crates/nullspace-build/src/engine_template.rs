//! `from_template`: a new template on an existing one's rootfs (hard-linked, never copied:
//! artifacts are immutable) and runtime defaults, under a new name.

use std::path::PathBuf;
use std::sync::Arc;

use crate::artifact::{read_document, SourceRecord, ROOTFS_FILE, TEMPLATE_FILE};
use crate::engine::{BuildContext, BuildOutcome, Engine};
use crate::error::BuildError;
use crate::events::{BuildEvent, EventSink};
use crate::ids;
use crate::request::BuildRequest;

/// The published template a build starts from.
#[derive(Clone, Debug)]
pub struct ParentTemplate {
    /// Its artifact dir (`rootfs.ext4`, `template.json`).
    pub artifact_dir: PathBuf,
    /// The ref the user gave.
    pub requested: String,
    /// Its exact ref, `namespace/name:tb_...`.
    pub reference: String,
}

impl Engine {
    /// Publishes `request` on `parent`'s rootfs in the build `context` (from `begin`/
    /// `begin_with`; the caller calls `end`). The request's start command and readiness
    /// replace the parent's; its `disk_mb` may not exceed the parent's rootfs.
    pub fn build_on_template(
        &self,
        request: &BuildRequest,
        parent: &ParentTemplate,
        namespace: &str,
        events: Arc<dyn EventSink>,
        context: &mut BuildContext,
    ) -> Result<BuildOutcome, BuildError> {
        let parent_document = read_document(&parent.artifact_dir)?;
        events.event(BuildEvent::Message {
            message: format!(
                "using template {} ({}, {} MiB rootfs)",
                parent.requested,
                parent.reference,
                parent_document.rootfs.size_bytes / (1024 * 1024)
            ),
        });
        if let Some(disk_mb) = request.disk_mb {
            if disk_mb * 1024 * 1024 > parent_document.rootfs.size_bytes {
                return Err(BuildError::InvalidRequest {
                    field: "disk_mb".into(),
                    message: format!(
                        "{disk_mb} MiB is larger than the parent template's rootfs ({} MiB); growing a template base is not supported yet",
                        parent_document.rootfs.size_bytes / (1024 * 1024)
                    ),
                });
            }
        }
        let staged = context.staging.path().join(ROOTFS_FILE);
        let source_rootfs = parent.artifact_dir.join(ROOTFS_FILE);
        if std::fs::hard_link(&source_rootfs, &staged).is_err() {
            std::fs::copy(&source_rootfs, &staged).map_err(|source| BuildError::Io {
                path: source_rootfs.clone(),
                source,
            })?;
        }
        events.event(BuildEvent::Cache {
            kind: "final_artifact",
            status: "hit",
            reason: None,
            subject: format!("rootfs of template {}", parent.requested),
        });
        let mut document = parent_document.clone();
        document.build_id = context.build_id.clone();
        document.template_id = context.template_id.clone();
        document.name = request.name.clone();
        document.tags = request.tags.clone();
        document.source = SourceRecord {
            kind: "template_base".into(),
            requested: parent.requested.clone(),
            reference: parent.reference.clone(),
            ..parent_document.source.clone()
        };
        document.build_config.build_backend = "native".into();
        document.build_config.disk_mb = request.disk_mb;
        document.build_config.cpu_count = request.cpu_count;
        document.build_config.memory_mb = request.memory_mb;
        document.build_config.internet_access = request.internet_access;
        document.build_config.skip_cache = request.skip_cache;
        document.build_config.base_image_auth_kind = None;
        request.apply_runtime_overrides(&mut document.runtime_defaults);
        document.created_at = ids::now_rfc3339();
        let destination = self.data_dir().templates().join(&context.build_id);
        let published = context.staging.publish(&document, &destination)?;
        if let Err(error) = self.store().publish(
            &context.build_id,
            &context.template_id,
            &request.tags,
            &published,
            &ids::now_rfc3339(),
        ) {
            let _ = std::fs::remove_dir_all(&published);
            return Err(error);
        }
        Ok(BuildOutcome {
            build_id: context.build_id.clone(),
            template_id: context.template_id.clone(),
            name: request.name.clone(),
            tags: request.tags.clone(),
            canonical_ref: format!(
                "{namespace}/{}:{}",
                request.name,
                request
                    .tags
                    .first()
                    .map(String::as_str)
                    .unwrap_or("default")
            ),
            rootfs_path: published.join(ROOTFS_FILE),
            template_json_path: published.join(TEMPLATE_FILE),
            artifact_dir: published,
            rootfs_cache_hit: true,
            seconds: context.started.elapsed().as_secs_f64(),
            template: document,
        })
    }

    /// `from_template` on this machine: `reference` resolves in the local store.
    pub fn build_on_local_template(
        &self,
        request: &BuildRequest,
        reference: &str,
        events: Arc<dyn EventSink>,
    ) -> Result<BuildOutcome, BuildError> {
        request.validate_common()?;
        let found = self.store().resolve(reference)?;
        let parent = ParentTemplate {
            artifact_dir: found.artifact_dir.clone(),
            requested: reference.to_string(),
            reference: format!(
                "{}/{}:{}",
                crate::store::LOCAL_NAMESPACE,
                found.name,
                found.build_id
            ),
        };
        let mut build = self.begin(request)?;
        let result = self.build_on_template(
            request,
            &parent,
            crate::store::LOCAL_NAMESPACE,
            events,
            &mut build,
        );
        self.end(build, result)
    }
}
