//! The HTTP API: routes by resource (builds, logs, blobs, templates, validate/plan), the
//! extractors and middleware they share, and the OpenAPI document generated from the
//! handlers and the `nullspace-api` types.

pub mod blobs;
pub mod builds;
pub mod extract;
pub mod logs;
pub mod middleware;
pub mod ops;
pub mod plan;
pub mod sandboxes;
pub mod templates;

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use nullspace_api::response::Health;
use nullspace_api::{BuildRequestBody, RequestError};
use nullspace_build::definition::{definition_from_body, BuildDefinition, RequestSecrets};

use crate::auth::ApiKeys;
use crate::config::ServerSettings;
use crate::error::ApiError;
use crate::runner::Runner;

/// Largest JSON request body (build requests carry context manifests, which can be large).
pub const REQUEST_BODY_LIMIT: usize = 64 << 20;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The build queue.
    pub runner: Arc<Runner>,
    /// API keys.
    pub keys: Arc<ApiKeys>,
    /// With no keys configured and auth disabled, every caller is this owner.
    pub open_owner: Option<String>,
    /// What the operator configured.
    pub config: Arc<ServerSettings>,
    /// This host's sandboxes.
    pub sandboxes: Arc<crate::sandboxes::SandboxService>,
}

impl AppState {
    /// A build request checked with the server's limits and policy.
    pub fn parse(
        &self,
        body: BuildRequestBody,
    ) -> Result<(BuildDefinition, RequestSecrets), RequestError> {
        definition_from_body(body, &self.config.limits, self.policy())
    }

    /// Whether every build must publish a VM snapshot.
    pub fn require_snapshots(&self) -> bool {
        self.runner.engine().requires_snapshots()
    }

    /// What Dockerfiles may do on this server.
    pub fn policy(&self) -> &nullspace_build::dockerfile::BuildkitPolicy {
        &self.runner.engine().buildkit_options().policy
    }
}

impl AppState {
    /// Runs `f`, which reads or writes the store (SQLite, whose calls block), on the blocking
    /// pool, so that no runtime worker thread ever waits on the database.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&AppState) -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        let state = self.clone();
        tokio::task::spawn_blocking(move || f(&state))
            .await
            .map_err(ApiError::internal)?
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The document's header; paths and schemas come from the handlers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Nullspace templates",
        description = "Build templates (rootfs + runtime defaults + VM snapshot) from images, Dockerfiles and declarative steps; follow their logs; manage refs; start sandboxes from them and run commands and move files in them. Every endpoint but /healthz, /readyz, /metrics and /openapi.json needs `Authorization: Bearer <api key>`; every non-2xx response is an ErrorEnvelope.",
        license(name = "Apache-2.0")
    ),
    components(schemas(nullspace_api::ErrorEnvelope))
)]
struct ApiDoc;

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "service", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "service",
    responses((status = 200, content_type = "application/json", description = "the OpenAPI document")),
)]
async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi_document(),
    )
}

/// Every route with its OpenAPI operation; the router and the document come from this one
/// list, so neither can miss a route.
fn routes() -> OpenApiRouter<AppState> {
    let json = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(templates::list_templates))
        .routes(routes!(builds::create_build))
        .routes(routes!(builds::get_build))
        .routes(routes!(logs::stream_logs))
        .routes(routes!(builds::cancel_build))
        .routes(routes!(builds::retry_build))
        .routes(routes!(builds::promote_build))
        .routes(routes!(blobs::missing_blobs))
        .routes(routes!(plan::validate))
        .routes(routes!(plan::plan))
        .routes(routes!(templates::get_ref))
        .routes(routes!(templates::history))
        .routes(routes!(templates::rename_template))
        .routes(routes!(templates::list_tags, templates::assign_tag))
        .routes(routes!(templates::remove_tag))
        .routes(routes!(templates::add_alias))
        .routes(routes!(templates::remove_alias))
        .routes(routes!(
            sandboxes::create_sandbox,
            sandboxes::list_sandboxes
        ))
        .routes(routes!(sandboxes::get_sandbox, sandboxes::kill_sandbox))
        .routes(routes!(sandboxes::set_timeout))
        .routes(routes!(sandboxes::run_command, sandboxes::list_commands))
        .routes(routes!(sandboxes::get_command, sandboxes::kill_command))
        .routes(routes!(sandboxes::stream_command))
        .routes(routes!(sandboxes::write_file, sandboxes::read_file))
        .routes(routes!(sandboxes::list_files))
        // axum's own 2 MiB default for raw bodies would cap file writes below the limit.
        .layer(axum::extract::DefaultBodyLimit::max(REQUEST_BODY_LIMIT))
        .layer(RequestBodyLimitLayer::new(REQUEST_BODY_LIMIT));
    // Blob uploads stream to disk under their own (larger) limit.
    let uploads = OpenApiRouter::new().routes(routes!(blobs::upload_blob, blobs::has_blob));
    json.merge(uploads)
}

/// The OpenAPI document (JSON, pretty-printed with a final newline), as committed in
/// `openapi.json`. Axum's wildcard `{*ref}` is written as the parameter `{ref}`.
pub fn openapi_document() -> String {
    let (_, mut document) = routes().split_for_parts();
    let paths = std::mem::take(&mut document.paths.paths);
    document.paths.paths = paths
        .into_iter()
        .map(|(path, item)| (path.replace("{*", "{"), item))
        .collect();
    let mut text = document
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// A worker's router: `/healthz`, `/readyz` and `/metrics` only.
pub fn ops_router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route("/healthz", axum::routing::get(healthz))
        .route("/readyz", axum::routing::get(ops::readyz))
        .route("/metrics", axum::routing::get(ops::metrics))
        .fallback(|request: axum::extract::Request| async move {
            ApiError::no_route(request.uri().path())
        })
        .with_state(state)
}

/// The router with every route and the middleware.
pub fn router(state: AppState) -> axum::Router {
    let (router, _) = routes().split_for_parts();
    router
        .fallback(|request: axum::extract::Request| async move {
            ApiError::no_route(request.uri().path())
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::envelope_and_auth,
        ))
        .layer(PropagateRequestIdLayer::new(
            header::HeaderName::from_static(middleware::REQUEST_ID_HEADER),
        ))
        .layer(SetRequestIdLayer::new(
            header::HeaderName::from_static(middleware::REQUEST_ID_HEADER),
            middleware::NewRequestId,
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed document is what the code generates. To regenerate it after changing a
    /// route or an API type: `NULLSPACE_UPDATE_OPENAPI=1 cargo test -p nullspace-server openapi`.
    #[test]
    fn committed_openapi_document_matches_the_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
        let generated = openapi_document();
        if std::env::var_os("NULLSPACE_UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} differs from the document the code generates; regenerate it with \
             NULLSPACE_UPDATE_OPENAPI=1 cargo test -p nullspace-server openapi",
            path.display()
        );
    }

    #[test]
    fn every_route_is_in_the_document() {
        let document: serde_json::Value = serde_json::from_str(&openapi_document()).unwrap();
        let paths = document["paths"].as_object().unwrap();
        let expected = [
            ("/healthz", "get"),
            ("/readyz", "get"),
            ("/metrics", "get"),
            ("/openapi.json", "get"),
            ("/v1/templates", "get"),
            ("/v1/templates/builds", "post"),
            ("/v1/templates/builds/{build_id}", "get"),
            ("/v1/templates/builds/{build_id}/logs", "get"),
            ("/v1/templates/builds/{build_id}/cancel", "post"),
            ("/v1/templates/builds/{build_id}/retry", "post"),
            ("/v1/templates/builds/{build_id}/promote", "post"),
            ("/v1/templates/build-context/blobs/missing", "post"),
            ("/v1/templates/build-context/blobs/{digest}", "put"),
            ("/v1/templates/build-context/blobs/{digest}", "head"),
            ("/v1/templates/validate", "post"),
            ("/v1/templates/plan", "post"),
            ("/v1/templates/refs/{ref}", "get"),
            ("/v1/templates/{template}/builds", "get"),
            ("/v1/templates/{template}/rename", "post"),
            ("/v1/templates/{template}/tags", "get"),
            ("/v1/templates/{template}/tags", "post"),
            ("/v1/templates/{template}/tags/{tag}", "delete"),
            ("/v1/templates/{template}/aliases", "post"),
            ("/v1/templates/{template}/aliases/{alias}", "delete"),
            ("/v1/sandboxes", "post"),
            ("/v1/sandboxes", "get"),
            ("/v1/sandboxes/{sandbox_id}", "get"),
            ("/v1/sandboxes/{sandbox_id}", "delete"),
            ("/v1/sandboxes/{sandbox_id}/timeout", "post"),
            ("/v1/sandboxes/{sandbox_id}/commands", "post"),
            ("/v1/sandboxes/{sandbox_id}/commands", "get"),
            ("/v1/sandboxes/{sandbox_id}/commands/{command_id}", "get"),
            ("/v1/sandboxes/{sandbox_id}/commands/{command_id}", "delete"),
            (
                "/v1/sandboxes/{sandbox_id}/commands/{command_id}/stream",
                "get",
            ),
            ("/v1/sandboxes/{sandbox_id}/files", "put"),
            ("/v1/sandboxes/{sandbox_id}/files", "get"),
            ("/v1/sandboxes/{sandbox_id}/files/list", "get"),
        ];
        let operations: usize = paths
            .values()
            .map(|item| item.as_object().map_or(0, |o| o.len()))
            .sum();
        assert_eq!(
            operations,
            expected.len(),
            "{:?}",
            paths.keys().collect::<Vec<_>>()
        );
        for (path, method) in expected {
            assert!(
                paths.get(path).and_then(|p| p.get(method)).is_some(),
                "{method} {path} is not documented"
            );
        }
        let schemas = document["components"]["schemas"].as_object().unwrap();
        for schema in [
            "BuildRequest",
            "Build",
            "LogEntry",
            "ErrorResponse",
            "PlanResponse",
        ] {
            assert!(schemas.contains_key(schema), "{schema} is missing");
        }
        let step = serde_json::to_string(&schemas["Step"]).unwrap();
        assert!(step.contains("apt_install"), "{step}");
    }
}
