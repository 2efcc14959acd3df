//! The builtin `base` template: what `Sandbox.create()` and `from_template("base")` mean for an
//! owner without a `base` of their own. It is built on first use from the configured image,
//! with a snapshot, under an owner no API key can have, and shared read-only by every owner.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use nullspace_api::BuildStatus;
use nullspace_build::definition::Base;

use crate::error::ApiError;
use crate::refs::resolve_ref;
use crate::store::BuildRecord;

use super::Runner;

/// The owner of builtin templates: no API key can have it (owners never hold `@`).
pub const BUILTIN_OWNER: &str = "@builtin";
/// The builtin template's name, and the ref a sandbox without a template means.
pub const BASE: &str = "base";

impl Runner {
    /// Whether `record` builds on `base` and its owner has no `base` of their own (so the
    /// builtin one must exist first).
    pub(super) fn needs_builtin_base(&self, record: &BuildRecord) -> bool {
        matches!(&record.definition.base, Base::Template { reference } if reference == BASE)
            && resolve_ref(self.store.as_ref(), &record.owner, BASE).is_err()
    }

    /// The builtin `base` template's ready build, building it first when there is none (one
    /// build at a time; concurrent callers wait for the same one).
    pub async fn builtin_base(self: &Arc<Self>) -> Result<BuildRecord, ApiError> {
        let _one_at_a_time = self.builtin_lock.lock().await;
        let store = self.store.clone();
        let found = tokio::task::spawn_blocking(move || {
            resolve_ref(store.as_ref(), BUILTIN_OWNER, BASE).map(|r| r.build)
        })
        .await
        .map_err(ApiError::internal)?;
        if let Ok(build) = found {
            return Ok(build);
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
        let mut changes = self.subscribe();
        loop {
            let store = self.store.clone();
            let id = record.id.clone();
            let now = tokio::task::spawn_blocking(move || store.build(None, &id))
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
