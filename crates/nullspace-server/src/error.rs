//! The error envelope every non-2xx response carries (`ErrorResponse`, spec §3.10).
//!
//! Handlers return [`ApiError`]; its `IntoResponse` parks the error in the response's extensions
//! and the API middleware (`api::middleware`) renders the JSON body, so every error carries
//! the `request_id` of the request that caused it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use nullspace_api::{ErrorEnvelope, RequestError};

pub use nullspace_api::ErrorDetail;

/// An API error: HTTP status, stable machine code, readable message.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine code (`invalid_request`, `template_not_found`, ...).
    pub code: &'static str,
    /// Readable message; names the field or input at fault.
    pub message: String,
    /// Structured detail, for build failures.
    pub error_detail: Option<ErrorDetail>,
    /// The build concerned, for template-build failures.
    pub build_id: Option<String>,
}

impl ApiError {
    /// An error with its HTTP status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            error_detail: None,
            build_id: None,
        }
    }

    /// 400 `invalid_request`, naming `field`.
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("{field}: {message}"),
        )
    }

    /// 400 `invalid_request` without a field.
    pub fn invalid_body(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 404 `template_build_not_found`.
    pub fn build_not_found(build_id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "template_build_not_found",
            format!("template build {build_id:?} not found"),
        )
    }

    /// 404 `template_not_found`.
    pub fn template_not_found(reference: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "template_not_found",
            format!("template {reference:?} not found"),
        )
    }

    /// 422 `file_upload_error`: the build context refers to something not uploaded.
    pub fn file_upload(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "file_upload_error",
            message,
        )
    }

    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 404 `not_found` for unknown routes.
    pub fn no_route(path: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such endpoint: {path}"),
        )
    }

    /// 500 `internal_error`; the message is logged, the caller sees a generic text.
    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        tracing::error!("internal error: {message}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error; see the server log",
        )
    }

    /// The envelope, with the request id.
    pub fn envelope(&self, request_id: &str) -> ErrorEnvelope {
        ErrorEnvelope {
            error: self.message.clone(),
            code: self.code.to_string(),
            request_id: request_id.to_string(),
            error_detail: self.error_detail.clone(),
            build_id: self.build_id.clone(),
        }
    }
}

impl From<RequestError> for ApiError {
    fn from(error: RequestError) -> ApiError {
        match error {
            RequestError::Body(message) => ApiError::invalid_body(message),
            RequestError::Invalid(e) => ApiError::invalid(&e.field, e.message),
            RequestError::TooLarge(e) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "file_upload_limit_exceeded",
                e.to_string(),
            ),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> ApiError {
        match error {
            crate::store::StoreError::NameTaken(why) => ApiError::conflict(why),
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        response.extensions_mut().insert(self);
        response
    }
}
