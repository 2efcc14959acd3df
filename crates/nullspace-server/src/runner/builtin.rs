//! The builtin `base` template: what `Sandbox.create()` and `from_template("base")` mean for an
//! owner without a `base` of their own. It is built on first use from the configured image,
//! with a snapshot, under an owner no API key can have, and shared read-only by every owner.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use nullspace_api::BuildStatus;
use nullspace_build::definition::{Base, BuildDefinition};

use crate::error::ApiError;
use crate::refs::resolve_ref;
use crate::store::{BuildRecord, HistoryFilter};

use super::Runner;

/// The owner of builtin templates: no API key can have it (owners never hold `@`).
pub const BUILTIN_OWNER: &str = "@builtin";
/// The builtin template's name, and the ref a sandbox without a template means.
pub const BASE: &str = "base";

impl Runner {
    /// Whether a build of `owner` with `definition` builds on `base` while the owner has no
    /// `base` of their own (so the builtin one must exist first).
    pub(super) fn needs_builtin_base(&self, definition: &BuildDefinition, owner: &str) -> bool {
        matches!(&definition.base, Base::Template { reference } if reference == BASE)
            && owner != BUILTIN_OWNER
            && resolve_ref(self.store.as_ref(), owner, BASE).is_err()
    }

    /// The build of the builtin `base` template to wait for: `None` when one is ready, else
    /// the one queued or running, else a new one (queued here). Blocks on the store.
    pub(super) fn queue_builtin_base(self: &Arc<Self>) -> Result<Option<String>, ApiError> {
        let _one_at_a_time = super::lock(&self.builtin_lock);
        if resolve_ref(self.store.as_ref(), BUILTIN_OWNER, BASE).is_ok() {
            return Ok(None);
        }
        if let Some(template) = self.store.template(BUILTIN_OWNER, BASE)? {
            for status in [BuildStatus::Building, BuildStatus::Waiting] {
                let filter = HistoryFilter {
                    status: Some(status),
                    limit: 1,
                    ..HistoryFilter::default()
                };
                if let Some((_, build)) = self
                    .store
                    .history(BUILTIN_OWNER, &template.id, &filter)?
                    .into_iter()
                    .next()
                {
                    return Ok(Some(build.id));
                }
            }
        }
        tracing::info!(
            "building the builtin base template from {}",
            self.base_image
        );
        let body: nullspace_api::BuildRequestBody = serde_json::from_value(serde_json::json!({
            "name": BASE,
            "base_image": self.base_image,
            // Ready once the guest runs a command: the VM runs, so `base` gets a snapshot.
            "ready_cmd": "true",
        }))
        .map_err(ApiError::internal)?;
        let (definition, secrets) = nullspace_build::definition::definition_from_body(
            body,
            &nullspace_build::definition::RequestLimits::default(),
            &self.engine.buildkit_options().policy,
        )
        .map_err(|e| ApiError::internal(format!("the builtin base template's request: {e:?}")))?;
        let record = self.submit(BUILTIN_OWNER, definition, secrets, None)?;
        Ok(Some(record.id))
    }

    /// The builtin `base` template's ready build, building it first when there is none
    /// (concurrent callers wait for the same build).
    pub async fn builtin_base(self: &Arc<Self>) -> Result<BuildRecord, ApiError> {
        let runner = self.clone();
        let queued = tokio::task::spawn_blocking(move || runner.queue_builtin_base())
            .await
            .map_err(ApiError::internal)??;
        let Some(id) = queued else {
            let store = self.store.clone();
            return tokio::task::spawn_blocking(move || {
                resolve_ref(store.as_ref(), BUILTIN_OWNER, BASE).map(|r| r.build)
            })
            .await
            .map_err(ApiError::internal)?;
        };
        let mut changes = self.subscribe();
        loop {
            let store = self.store.clone();
            let wanted = id.clone();
            let now = tokio::task::spawn_blocking(move || store.build(None, &wanted))
                .await
                .map_err(ApiError::internal)??;
            match now {
                Some(build) if build.status == BuildStatus::Ready => return Ok(build),
                Some(build) if build.status.is_terminal() => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "base_template_unavailable",
                        format!(
                            "the builtin base template (from {}) failed to build in {}: {}",
                            self.base_image,
                            build.id,
                            build.error_message.unwrap_or_default()
                        ),
                    ))
                }
                _ => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), changes.changed()).await;
                }
            }
        }
    }
}
