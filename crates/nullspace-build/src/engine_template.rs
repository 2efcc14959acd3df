//! `from_template`: a new template on an existing one's rootfs (hard-linked, never copied:
//! artifacts are immutable) and runtime defaults, under a new name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nullspace_oci::{Credentials, Digest};

use crate::buildkit::BuildkitDriver;
use crate::declarative::{RenderedDockerfile, Step};
use crate::dockerfile::DockerfileSpec;
use crate::engine_dockerfile::{declarative_spec, BuildkitOptions};
use crate::error::io_at;
use crate::request::BaseSelector;

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
    /// replace the parent's; its `disk_mb` may not exceed the parent's rootfs. With a start
    /// command or readiness, the new template gets its own snapshot (the parent's VM state is
    /// the parent's: its host name, runtime defaults and command differ).
    pub async fn build_on_template(
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
            kind: nullspace_api::CacheKind::FinalArtifact,
            status: nullspace_api::CacheStatus::Hit,
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
        document.snapshot = None;
        let needs_vm = document.runtime_defaults.start_cmd.is_some()
            || document.runtime_defaults.readiness.is_some()
            || self.requires_snapshots();
        if needs_vm {
            let vm = self.vm_runtime()?;
            document.snapshot = Some(
                crate::build_vm::snapshot_stage(
                    &vm,
                    self.data_dir().root(),
                    &context.build_id,
                    request,
                    &document.runtime_defaults,
                    context.staging.path(),
                    &document.rootfs.cache_key,
                    self.buildkit_options().policy.allow_host_network,
                    events.clone(),
                )
                .await?,
            );
        } else {
            let warning = crate::build_vm::ROOTFS_ONLY_WARNING.to_string();
            events.event(BuildEvent::Warning {
                message: warning.clone(),
            });
            document.warnings.push(warning);
        }
        document.created_at = ids::now_rfc3339();
        let destination = self.data_dir().templates().join(&context.build_id);
        let published = context.staging.publish(&document, &destination)?;
        context.record_publication(self.store(), &request.tags, &published)?;
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

    /// The local template `reference` names, as a parent.
    pub fn local_parent(&self, reference: &str) -> Result<ParentTemplate, BuildError> {
        let found = self.store().resolve(reference)?;
        Ok(ParentTemplate {
            artifact_dir: found.artifact_dir.clone(),
            requested: reference.to_string(),
            reference: format!(
                "{}/{}:{}",
                crate::store::LOCAL_NAMESPACE,
                found.name,
                found.build_id
            ),
        })
    }

    /// `from_template` on this machine: `reference` resolves in the local store.
    pub async fn build_on_local_template(
        &self,
        request: &BuildRequest,
        reference: &str,
        events: Arc<dyn EventSink>,
    ) -> Result<BuildOutcome, BuildError> {
        request.validate_common()?;
        let parent = self.local_parent(reference)?;
        let mut build = self.begin(request)?;
        let result = self
            .build_on_template(
                request,
                &parent,
                crate::store::LOCAL_NAMESPACE,
                events,
                &mut build,
            )
            .await;
        self.end(build, result)
    }

    /// Declarative `steps` on the local template `reference`, with the environment's BuildKit;
    /// copies read `context_dir`.
    pub async fn build_steps_on_local_template(
        &self,
        request: &BuildRequest,
        reference: &str,
        steps: &[Step],
        context_dir: Option<PathBuf>,
        events: Arc<dyn EventSink>,
    ) -> Result<BuildOutcome, BuildError> {
        request.validate_common()?;
        let parent = self.local_parent(reference)?;
        let (spec, _) = template_steps_spec(steps, context_dir)?;
        let mut build = self.begin(request)?;
        let result = self
            .build_steps_on_template(
                self.buildkit_driver(),
                self.buildkit_options(),
                request,
                &parent,
                &spec,
                events,
                &mut build,
            )
            .await;
        self.end(build, result)
    }

    /// Writes `parent`'s image as an OCI layout in `dir` (its config and layers hard-linked
    /// from the blob store, under a manifest written here) and returns the BuildKit context
    /// source `oci-layout://DIR@DIGEST`. Blobs that are gone (a parent imported before configs
    /// were kept) are a [`BuildError::RebuildRequired`].
    pub fn parent_image_layout(
        &self,
        parent: &ParentTemplate,
        dir: &Path,
    ) -> Result<String, BuildError> {
        let document = read_document(&parent.artifact_dir)?;
        let source = &document.source;
        let blob_dir = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blob_dir).map_err(io_at(&blob_dir))?;
        let link = |digest: &str| -> Result<u64, BuildError> {
            let parsed: Digest = digest
                .parse()
                .map_err(|e| BuildError::Internal(format!("{e}")))?;
            let stored = self.blobs.path(&parsed);
            let size = std::fs::metadata(&stored)
                .map_err(|_| BuildError::RebuildRequired {
                    message: format!(
                        "blob {digest} of template {} is no longer in the blob store; build that template again",
                        parent.requested
                    ),
                })?
                .len();
            let target = blob_dir.join(parsed.hex());
            if !target.exists() && std::fs::hard_link(&stored, &target).is_err() {
                std::fs::copy(&stored, &target).map_err(io_at(&target))?;
            }
            Ok(size)
        };
        let config_size = link(&source.config_digest)?;
        let mut layers = Vec::new();
        for layer in &source.layers {
            let size = link(&layer.digest)?;
            layers.push(serde_json::json!({
                "mediaType": layer.media_type,
                "digest": layer.digest,
                "size": size,
            }));
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": source.config_digest,
                "size": config_size,
            },
            "layers": layers,
        }))
        .map_err(|e| BuildError::Internal(e.to_string()))?;
        let manifest_digest = Digest::sha256_of(&manifest);
        let manifest_path = blob_dir.join(manifest_digest.hex());
        std::fs::write(&manifest_path, &manifest).map_err(io_at(&manifest_path))?;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest.to_string(),
                "size": manifest.len(),
            }],
        });
        for (name, text) in [
            ("index.json", index.to_string()),
            (
                "oci-layout",
                r#"{"imageLayoutVersion":"1.0.0"}"#.to_string(),
            ),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(io_at(&path))?;
        }
        Ok(format!("oci-layout://{}@{manifest_digest}", dir.display()))
    }

    /// Declarative steps on `parent`: `spec` (from [`template_steps_spec`]) runs on the
    /// parent's image, handed to BuildKit as a named context, and the result is imported and
    /// published like any BuildKit build. The parent's start command and readiness carry over
    /// unless the request sets its own.
    #[allow(clippy::too_many_arguments)]
    pub async fn build_steps_on_template(
        &self,
        driver: &dyn BuildkitDriver,
        options: &BuildkitOptions,
        request: &BuildRequest,
        parent: &ParentTemplate,
        spec: &DockerfileSpec,
        events: Arc<dyn EventSink>,
        build: &mut BuildContext,
    ) -> Result<BuildOutcome, BuildError> {
        let parent_document = read_document(&parent.artifact_dir)?;
        events.event(BuildEvent::Message {
            message: format!(
                "steps on template {} ({}): its image goes to BuildKit as context {TEMPLATE_PARENT_CONTEXT}",
                parent.requested, parent.reference
            ),
        });
        let layout = build.staging.scratch()?.join("parent-image");
        let source = self.parent_image_layout(parent, &layout)?;
        let mut spec = spec.clone();
        spec.image_contexts
            .insert(TEMPLATE_PARENT_CONTEXT.to_string(), source);
        let mut request = request.clone();
        if request.start_cmd.is_none() {
            request.start_cmd = parent_document.runtime_defaults.start_cmd.clone();
        }
        if request.readiness.is_none() {
            request.readiness = parent_document.runtime_defaults.readiness.clone();
        }
        self.run_dockerfile(
            driver,
            options,
            &request,
            &spec,
            &Credentials::Anonymous,
            events,
            build,
        )
        .await
    }
}

/// The spec of declarative `steps` on a template base: rendered `FROM` the parent's image
/// context ([`TEMPLATE_PARENT_CONTEXT`], filled in by [`Engine::build_steps_on_template`]).
pub fn template_steps_spec(
    steps: &[Step],
    context_dir: Option<PathBuf>,
) -> Result<(DockerfileSpec, RenderedDockerfile), BuildError> {
    declarative_spec(
        &BaseSelector::Image(TEMPLATE_PARENT_CONTEXT.to_string()),
        steps,
        context_dir,
    )
}

/// The named context a template's image gets for steps on it (`FROM` this name).
pub const TEMPLATE_PARENT_CONTEXT: &str = "nullspace-template-parent";
