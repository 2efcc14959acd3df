//! Parsing request bodies so that a bad field is named by its JSON path.

use serde::de::DeserializeOwned;

use crate::error::{FieldError, RequestError};

/// Parses `bytes` as `T`. An empty (or all-whitespace) body is `{}`. A type error, a missing
/// field or an unknown field is a [`RequestError::Invalid`] whose `field` is the JSON path
/// (`steps[1].cmd`); malformed JSON is a [`RequestError::Body`].
pub fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RequestError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(RequestError::Body(
            "the request body must be a JSON object".into(),
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() || inner.is_io() {
            return RequestError::Body(format!("the request body is not valid JSON: {inner}"));
        }
        let message = strip_position(&inner.to_string());
        let field_error = |field: String, what: &str| {
            // Paths of unknown fields end with the field, except inside internally tagged
            // enums (steps), whose content is buffered before the field is seen.
            let full = match path.as_str() {
                "." | "" => field,
                p if p == field || p.ends_with(&format!(".{field}")) => p.to_string(),
                p => format!("{p}.{field}"),
            };
            RequestError::Invalid(FieldError::new(full, what))
        };
        if let Some(field) = unknown_field(&message) {
            return field_error(field, "unknown field");
        }
        if let Some(field) = missing_field(&message) {
            return field_error(field, "is required");
        }
        match path.as_str() {
            "." | "" => RequestError::Body(format!("the request body is invalid: {message}")),
            path => RequestError::Invalid(FieldError::new(path, message)),
        }
    })?;
    deserializer
        .end()
        .map_err(|e| RequestError::Body(format!("the request body is not valid JSON: {e}")))?;
    Ok(value)
}

/// serde_json appends ` at line L column C`, which means nothing to a caller who sent a
/// one-line body.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

/// The field of serde's "missing field `x`" message.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_string())
}

/// The field of serde's "unknown field `x`, expected ..." message.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_string())
}
