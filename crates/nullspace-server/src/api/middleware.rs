//! What every request goes through: a request id (tower-http's `SetRequestId`, echoed in
//! `x-request-id`), authentication, and the error envelope for every non-2xx response.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tower_http::request_id::{MakeRequestId, RequestId};

use crate::error::ApiError;

use super::extract::Owner;
use super::AppState;

/// The request-id header.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Makes `req_<16 random characters>` ids.
#[derive(Clone, Copy, Default)]
pub struct NewRequestId;

impl MakeRequestId for NewRequestId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        use rand::Rng;
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut rng = rand::thread_rng();
        let suffix: String = (0..16)
            .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
            .collect();
        HeaderValue::from_str(&format!("req_{suffix}"))
            .ok()
            .map(RequestId::new)
    }
}

fn render(error: &ApiError, request_id: &str) -> Response {
    (error.status, Json(error.envelope(request_id))).into_response()
}

/// Authenticates the caller and renders errors (a handler's, an extractor's, a layer's) as
/// the envelope with the request's id.
pub async fn envelope_and_auth(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or_default()
        .to_string();
    let path = request.uri().path();
    let public = matches!(path, "/openapi.json" | "/healthz" | "/readyz" | "/metrics");
    let mut response = if public {
        next.run(request).await
    } else {
        match authenticate(&state, &request) {
            Ok(owner) => {
                request.extensions_mut().insert(Owner(owner));
                next.run(request).await
            }
            Err(error) => render(&error, &request_id),
        }
    };
    if let Some(error) = response.extensions_mut().remove::<ApiError>() {
        response = render(&error, &request_id);
    } else if matches!(
        response.status().as_u16(),
        400 | 405 | 411 | 413 | 415 | 422
    ) && !is_json(&response)
    {
        // A layer's own rejection (a body over the limit, say): still the envelope.
        let error = if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "file_upload_limit_exceeded",
                format!(
                    "the request body is larger than {} bytes",
                    super::REQUEST_BODY_LIMIT
                ),
            )
        } else {
            ApiError::new(
                response.status(),
                "invalid_request",
                format!("the request was rejected ({})", response.status()),
            )
        };
        response = render(&error, &request_id);
    }
    response
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/event-stream"))
}

fn authenticate(state: &AppState, request: &Request) -> Result<String, ApiError> {
    if let Some(owner) = &state.open_owner {
        return Ok(owner.clone());
    }
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <api key>"))?;
    let key = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <api key>"))?;
    state
        .keys
        .owner(key)
        .map(str::to_string)
        .ok_or_else(|| ApiError::unauthorized("invalid API key"))
}
