//! API keys: `Authorization: Bearer <key>`; each key belongs to an owner, whose name is also the
//! namespace of the templates it builds.

use std::collections::HashMap;
use std::path::Path;

/// Environment variable: `key1:owner1,key2:owner2`.
pub const API_KEYS_ENV: &str = "NULLSPACE_API_KEYS";
/// Environment variable: a file with one `key:owner` per line (`#` comments).
pub const API_KEYS_FILE_ENV: &str = "NULLSPACE_API_KEYS_FILE";

/// A configuration problem with the keys.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// An entry is malformed; the message names the entry by position, never the key.
    #[error("{source_name}: entry {index}: {message}")]
    Malformed {
        /// Where the keys came from.
        source_name: String,
        /// 1-based entry number.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// The keys file is unreadable.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The configured keys, held as SHA-256 digests (the keys themselves are not kept in memory
/// after parsing): a request's key is hashed and looked up, so neither a timing difference nor
/// a memory dump gives a key away.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: HashMap<[u8; 32], String>,
}

fn digest(key: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(key.as_bytes()).into()
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.keys.len())
    }
}

/// Whether `owner` can serve as a namespace slug.
pub fn valid_owner(owner: &str) -> bool {
    !owner.is_empty()
        && owner.len() <= 63
        && owner
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

impl ApiKeys {
    /// Parses `key:owner` entries separated by commas or newlines.
    pub fn parse(text: &str, source_name: &str) -> Result<ApiKeys, KeysError> {
        let mut keys = HashMap::new();
        let entries = text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.starts_with('#'));
        for (i, entry) in entries.enumerate() {
            let bad = |message: &str| KeysError::Malformed {
                source_name: source_name.to_string(),
                index: i + 1,
                message: message.to_string(),
            };
            let (key, owner) = entry
                .rsplit_once(':')
                .ok_or_else(|| bad("expected key:owner"))?;
            if key.len() < 8 {
                return Err(bad("the key is shorter than 8 characters"));
            }
            if !valid_owner(owner) {
                return Err(bad(
                    "the owner must be 1-63 lower-case letters, digits, '-' or '_'",
                ));
            }
            keys.insert(digest(key), owner.to_string());
        }
        Ok(ApiKeys { keys })
    }

    /// Keys from [`API_KEYS_ENV`] and [`API_KEYS_FILE_ENV`] (both may be set).
    pub fn from_env() -> Result<ApiKeys, KeysError> {
        let mut keys = ApiKeys::default();
        if let Ok(text) = std::env::var(API_KEYS_ENV) {
            keys.keys.extend(ApiKeys::parse(&text, API_KEYS_ENV)?.keys);
        }
        if let Some(path) = std::env::var_os(API_KEYS_FILE_ENV) {
            let path = Path::new(&path);
            let text = std::fs::read_to_string(path).map_err(|source| KeysError::Io {
                path: path.display().to_string(),
                source,
            })?;
            keys.keys
                .extend(ApiKeys::parse(&text, &path.display().to_string())?.keys);
        }
        Ok(keys)
    }

    /// No keys configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The owner of `key`.
    pub fn owner(&self, key: &str) -> Option<&str> {
        self.keys.get(&digest(key)).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_finds_owners() {
        let keys = ApiKeys::parse("key-one-123:alice, key-two-456:bob", "env").unwrap();
        assert_eq!(keys.owner("key-one-123"), Some("alice"));
        assert_eq!(keys.owner("key-two-456"), Some("bob"));
        assert_eq!(keys.owner("nope"), None);
        assert!(ApiKeys::parse("short:alice", "env").is_err());
        let err = ApiKeys::parse("long-enough-key:Bad/Owner", "env").unwrap_err();
        assert!(!err.to_string().contains("long-enough-key"));
    }
}
