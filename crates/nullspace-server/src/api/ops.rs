//! Operations endpoints, open like `/healthz`: readiness (`/readyz`: the store answers and the
//! process is not draining) and metrics (`/metrics`, Prometheus' text format). A worker
//! process serves only these and `/healthz`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use nullspace_api::response::Health;

use super::AppState;

/// Readiness: 200 when the store answers and the process takes work; 503 otherwise.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "service",
    responses(
        (status = 200, body = Health, description = "ready"),
        (status = 503, body = Health, description = "draining, or the store does not answer")
    )
)]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.runner.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "draining".into(),
            }),
        );
    }
    let runner = state.runner.clone();
    match tokio::task::spawn_blocking(move || runner.store_answers()).await {
        Ok(Ok(())) => (
            StatusCode::OK,
            Json(Health {
                status: "ready".into(),
            }),
        ),
        Ok(Err(error)) => {
            tracing::warn!("readiness: {error}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health {
                    status: "store unavailable".into(),
                }),
            )
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "store unavailable".into(),
            }),
        ),
    }
}

/// Metrics in Prometheus' text exposition format: queue depth by status, this process's
/// claims, ends, build durations and cache decisions.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "service",
    responses(
        (status = 200, content_type = "text/plain; version=0.0.4", description = "the metrics"),
        (status = 503, description = "the store does not answer")
    )
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let runner = state.runner.clone();
    match tokio::task::spawn_blocking(move || runner.metrics_text()).await {
        Ok(Ok(text)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            text,
        ),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            "# the store does not answer\n".to_string(),
        ),
    }
}
