//! Errors: a request field that is wrong ([`FieldError`], [`RequestError`]) and the envelope
//! every non-2xx response carries ([`ErrorEnvelope`], spec §3.10).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::enums::FailurePhase;

/// A request field that is wrong: its JSON path (`steps[2].cmd`, `readiness.port`) and what is
/// wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// JSON path of the field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// The error of `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why a request was refused before anything ran.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The body is not JSON, or not an object.
    #[error("{0}")]
    Body(String),
    /// A field is wrong (HTTP 400 `invalid_request`).
    #[error(transparent)]
    Invalid(FieldError),
    /// A field is over a size limit (HTTP 413 `file_upload_limit_exceeded`).
    #[error(transparent)]
    TooLarge(FieldError),
}

impl RequestError {
    /// [`RequestError::Invalid`] of `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> RequestError {
        RequestError::Invalid(FieldError::new(field, message))
    }
}

impl From<FieldError> for RequestError {
    fn from(error: FieldError) -> RequestError {
        RequestError::Invalid(error)
    }
}

/// `error_detail` of an error or a failed build: the phase and a readable message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// The phase that failed.
    pub phase: FailurePhase,
    /// What went wrong.
    pub message: String,
}

/// The body of every non-2xx response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = ErrorResponse)]
pub struct ErrorEnvelope {
    /// Readable message; names the field or input at fault.
    pub error: String,
    /// Stable machine code (`invalid_request`, `template_not_found`, ...).
    pub code: String,
    /// The request's id (also in the `x-request-id` header).
    pub request_id: String,
    /// Structured detail, for build failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_detail: Option<ErrorDetail>,
    /// The build concerned, for template-build failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
}
