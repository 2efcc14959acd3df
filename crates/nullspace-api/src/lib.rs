//! The wire types of the Nullspace template API: request bodies, responses, log entries,
//! errors and the enums they use, with serde and OpenAPI schemas (utoipa). The server, the
//! CLI's client mode and the engine all use these types, so the API has one model.
//!
//! Requests refuse unknown fields; [`from_json`] names a bad field by its JSON path.
#![deny(missing_docs)]

pub mod context;
pub mod enums;
pub mod error;
pub mod json;
pub mod log;
pub mod request;
pub mod response;
pub mod sandbox;
pub mod secret;
pub mod steps;

pub use context::{ContextEntry, ContextManifest, UploadStatus};
pub use enums::{
    BuildBackend, BuildStatus, CacheKind, CacheStatus, FailurePhase, LogKind, LogLevel, LogPhase,
    SourceKind, TriggeredBy, Visibility,
};
pub use error::{ErrorDetail, ErrorEnvelope, FieldError, RequestError};
pub use json::from_json;
pub use log::{CacheSummary, LogEntry};
pub use request::BuildRequestBody;
pub use secret::SecretString;
pub use steps::{CopyItem, Step};
