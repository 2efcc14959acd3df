//! Errors in client mode: the server's error envelope (or one shaped like it) and its exit
//! code.

use std::process::ExitCode;

use nullspace_client::ClientError;
use serde_json::{json, Value};

/// An error envelope from the server (`{error, code, ...}`), or one shaped like it.
#[derive(Debug)]
pub struct RemoteError {
    /// Stable machine code (`invalid_request`, `template_build_not_found`, ...).
    pub code: String,
    /// Readable message.
    pub message: String,
    /// The whole envelope, printed with `--json`.
    pub envelope: Value,
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for RemoteError {}

impl RemoteError {
    pub(crate) fn new(code: &str, message: impl Into<String>) -> RemoteError {
        let message = message.into();
        RemoteError {
            envelope: json!({ "error": message, "code": code }),
            code: code.to_string(),
            message,
        }
    }

    /// The exit code for the error code (the same mapping as local errors).
    pub fn exit_code(&self) -> u8 {
        match self.code.as_str() {
            "invalid_request" => 2,
            c if c.ends_with("_not_found") => 3,
            "unauthorized" | "authentication_failed" => 4,
            c if c.ends_with("_permission_denied") => 5,
            c if c == "file_upload_limit_exceeded"
                || c.contains("quota")
                || c.contains("rate_limit") =>
            {
                6
            }
            c if c == "conflict" || c.ends_with("_conflict") || c == "rebuild_required" => 7,
            _ => 1,
        }
    }

    /// Prints the error (the envelope with `--json`) and returns the exit code.
    pub fn report(&self, json_output: bool) -> ExitCode {
        if json_output {
            println!("{}", self.envelope);
        } else {
            eprintln!("error: {self}");
            if let Some(detail) = self.envelope.get("error_detail").filter(|d| !d.is_null()) {
                eprintln!("  detail: {detail}");
            }
        }
        ExitCode::from(self.exit_code())
    }
}

impl From<&ClientError> for RemoteError {
    fn from(error: &ClientError) -> RemoteError {
        match error {
            ClientError::Api {
                code,
                message,
                envelope,
                ..
            } => RemoteError {
                code: code.clone(),
                message: message.clone(),
                envelope: envelope.clone(),
            },
            other => RemoteError::new(other.code(), other.to_string()),
        }
    }
}
