//! Running one build on the engine: the BuildKit spec and the uploaded contexts written into
//! the staging dir, then the Dockerfile, declarative, template or image path.

use std::sync::Arc;

use nullspace_api::CacheKind;
use nullspace_build::context::{
    staging_context_dir, staging_named_context_dir, ContextBlobs, ContextManifest,
};
use nullspace_build::definition::{buildkit_spec, Base, RequestSecrets};
use nullspace_build::engine::BuildContext;
use nullspace_build::engine_template::ParentTemplate;
use nullspace_build::{BuildError, BuildEvent, BuildOutcome, EventSink};
use nullspace_oci::Credentials;

use crate::refs::resolve_ref;
use crate::store::BuildRecord;

use super::Runner;

impl Runner {
    /// Runs the engine for one build: its records, staging dir, import and publication.
    pub(super) async fn execute(
        &self,
        record: &BuildRecord,
        secrets: &RequestSecrets,
        events: Arc<dyn EventSink>,
    ) -> Result<BuildOutcome, BuildError> {
        let request = record.definition.engine_request();
        let credentials = &secrets
            .base_image_auth
            .clone()
            .unwrap_or(Credentials::Anonymous);
        let mut spec = buildkit_spec(&record.definition, secrets)?;
        if self.store.is_shared() {
            self.engine.store().mirror_template(&record.template_id)?;
            // The build was waiting when claimed: an artifact of it here is what an earlier
            // attempt on this host left unrecorded (killed between publish and record).
            let _ = nullspace_build::artifact::remove_tree(
                &self.engine.data_dir().templates().join(&record.id),
            );
        }
        let mut context = self.engine.begin_with(&record.id, &record.template_id)?;
        // The store publishes (tags and `ready`) in the transaction that ends the build's record.
        context.leave_publishing_to_caller();
        // Owners share the blob store and the rootfs cache but never each other's layers.
        context.restrict_content_to(&record.owner);
        if let Some((spec, _)) = &mut spec {
            let named = &record.definition.named_contexts;
            let main = record.definition.build_context.as_ref().map(|m| ("", m));
            for (name, manifest) in main
                .into_iter()
                .chain(named.iter().map(|(n, m)| (n.as_str(), m)))
            {
                if let Err(error) = self.fetch_context_blobs(&record.owner, manifest).await {
                    return self.engine.end(context, Err(error));
                }
                match self.materialize_context(record, name, manifest, &context, &events) {
                    Ok(dir) if name.is_empty() => spec.context_dir = Some(dir),
                    Ok(dir) => {
                        spec.named_contexts.insert(name.to_string(), dir);
                    }
                    Err(error) => return self.engine.end(context, Err(error)),
                }
            }
        }
        let result = match (&spec, &record.definition.base) {
            (Some((spec, _)), Base::Template { reference }) => {
                match self.parent_template(record, reference).await {
                    Ok(parent) => {
                        self.engine
                            .build_steps_on_template(
                                self.engine.buildkit_driver(),
                                self.engine.buildkit_options(),
                                &request,
                                &parent,
                                spec,
                                events.clone(),
                                &mut context,
                            )
                            .await
                    }
                    Err(error) => Err(error),
                }
            }
            (Some((spec, _)), _) => {
                let driver = self.engine.buildkit_driver();
                self.engine
                    .run_dockerfile(
                        driver,
                        self.engine.buildkit_options(),
                        &request,
                        spec,
                        credentials,
                        events.clone(),
                        &mut context,
                    )
                    .await
            }
            (None, Base::Dockerfile { .. }) => Err(BuildError::Internal(
                "a Dockerfile build without a BuildKit spec".into(),
            )),
            (None, Base::Image { .. }) => {
                self.engine
                    .import_from_registry(&request, credentials, events.clone(), &mut context)
                    .await
            }
            (None, Base::Template { reference }) => {
                self.build_on_template(record, reference, events.clone(), &mut context)
                    .await
            }
        };
        self.engine.end(context, result)
    }

    /// Writes the uploaded build context into the build's staging dir and logs a `file_blob`
    /// cache entry per blob.
    #[allow(clippy::result_large_err)] // `BuildError` is the engine's error type.
    fn materialize_context(
        &self,
        record: &BuildRecord,
        name: &str,
        manifest: &ContextManifest,
        context: &BuildContext,
        events: &Arc<dyn EventSink>,
    ) -> Result<std::path::PathBuf, BuildError> {
        for (status, reason, subject) in manifest.cache_decisions() {
            events.event(BuildEvent::Cache {
                kind: CacheKind::FileBlob,
                status,
                reason,
                subject,
            });
        }
        let blobs = ContextBlobs::open(self.engine.data_dir(), &record.owner)?;
        let scratch = context.staging.scratch()?;
        let dir = if name.is_empty() {
            staging_context_dir(&scratch)
        } else {
            staging_named_context_dir(&scratch, name).map_err(|source| BuildError::Io {
                path: scratch.clone(),
                source,
            })?
        };
        let stats = nullspace_build::context::materialize(manifest, &blobs, &dir)?;
        events.event(BuildEvent::Message {
            message: format!(
                "build context {}{}: {} files, {} bytes",
                if name.is_empty() {
                    String::new()
                } else {
                    format!("{name} ")
                },
                manifest.digest(),
                stats.files,
                stats.bytes
            ),
        });
        Ok(dir)
    }

    /// `from_template`: the parent (resolved in the owner's namespace) and the engine's
    /// [`Engine::build_on_template`].
    #[allow(clippy::result_large_err)] // `BuildError` is the engine's error type.
    async fn build_on_template(
        &self,
        record: &BuildRecord,
        reference: &str,
        events: Arc<dyn EventSink>,
        context: &mut BuildContext,
    ) -> Result<BuildOutcome, BuildError> {
        let parent = self.parent_template(record, reference).await?;
        self.engine
            .build_on_template(
                &record.definition.engine_request(),
                &parent,
                &record.owner,
                events,
                context,
            )
            .await
    }

    /// The published template `reference` names in the build owner's namespace, fetched from
    /// object storage first when another host built it.
    #[allow(clippy::result_large_err)] // `BuildError` is the engine's error type.
    async fn parent_template(
        &self,
        record: &BuildRecord,
        reference: &str,
    ) -> Result<ParentTemplate, BuildError> {
        let parent = resolve_ref(self.store.as_ref(), &record.owner, reference)
            .or_else(|own| match reference {
                // An owner without a `base` of their own builds on the builtin one.
                super::BASE => resolve_ref(self.store.as_ref(), super::BUILTIN_OWNER, reference)
                    .map_err(|_| own),
                _ => Err(own),
            })
            .map_err(|e| BuildError::InvalidRequest {
                field: "base.value".into(),
                message: e.message,
            })?;
        if parent.build.result.is_none() {
            return Err(BuildError::NotFound {
                reference: reference.to_string(),
            });
        }
        let artifact_dir = self
            .local_artifact(&parent.build)
            .await
            .map_err(|e| BuildError::Internal(e.message))?;
        Ok(ParentTemplate {
            artifact_dir,
            requested: reference.to_string(),
            reference: format!(
                "{}/{}:{}",
                record.owner, parent.template.name, parent.build.id
            ),
        })
    }
}
