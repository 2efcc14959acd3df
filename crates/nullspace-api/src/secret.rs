//! Request-time secret values: sent by clients, never printed, stored or logged.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A secret string (a password, a key, a build secret). `Debug` shows `<redacted>`; the value
/// is reachable only through [`SecretString::expose`].
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, format = Password)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> SecretString {
        SecretString(value.into())
    }

    /// The value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Replaces the value with `<redacted>` (for `--dry-run` output).
    pub fn redact(&mut self) {
        self.0 = "<redacted>".into();
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}
