//! The image config blob (OCI image config with Docker's extensions such as `Healthcheck`).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::digest::Digest;
use crate::error::Error;

/// Largest config blob accepted.
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// `null` and absence both become the type's default (Go writes `null` for empty slices/maps).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A parsed image config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// CPU architecture.
    #[serde(default, deserialize_with = "null_default")]
    pub architecture: String,
    /// Operating system.
    #[serde(default, deserialize_with = "null_default")]
    pub os: String,
    /// CPU variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// `os.version`.
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// `os.features`.
    #[serde(
        rename = "os.features",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub os_features: Vec<String>,
    /// Creation time (RFC 3339), as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Runtime defaults.
    #[serde(default, deserialize_with = "null_default")]
    pub config: ContainerConfig,
    /// Layer diff ids.
    #[serde(default, deserialize_with = "null_default")]
    pub rootfs: RootFs,
    /// Build history.
    #[serde(default, deserialize_with = "null_default")]
    pub history: Vec<History>,
}

/// The `config` object: runtime defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// `User`.
    #[serde(default, deserialize_with = "null_default")]
    pub user: String,
    /// `ExposedPorts` keys (`80/tcp`).
    #[serde(default, deserialize_with = "null_default")]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    /// `Env` (`KEY=VALUE`).
    #[serde(default, deserialize_with = "null_default")]
    pub env: Vec<String>,
    /// `Entrypoint`.
    #[serde(default, deserialize_with = "null_default")]
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    #[serde(default, deserialize_with = "null_default")]
    pub cmd: Vec<String>,
    /// `Volumes` keys.
    #[serde(default, deserialize_with = "null_default")]
    pub volumes: BTreeMap<String, serde_json::Value>,
    /// `WorkingDir`.
    #[serde(default, deserialize_with = "null_default")]
    pub working_dir: String,
    /// `Labels`.
    #[serde(default, deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
    /// `StopSignal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// `Shell` (Docker extension).
    #[serde(default, deserialize_with = "null_default")]
    pub shell: Vec<String>,
    /// `Healthcheck` (Docker extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// `ArgsEscaped` (Windows only; kept for completeness).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_escaped: Option<bool>,
    /// `OnBuild` triggers.
    #[serde(default, deserialize_with = "null_default")]
    pub on_build: Vec<String>,
}

/// Docker's `Healthcheck`; durations in nanoseconds (0 = inherit/default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", args…]` or `["CMD-SHELL", command]`.
    #[serde(default, deserialize_with = "null_default")]
    pub test: Vec<String>,
    /// Interval between checks (ns).
    #[serde(default)]
    pub interval: i64,
    /// Timeout of one check (ns).
    #[serde(default)]
    pub timeout: i64,
    /// Start period (ns).
    #[serde(default)]
    pub start_period: i64,
    /// Interval during the start period (ns).
    #[serde(default)]
    pub start_interval: i64,
    /// Consecutive failures needed to report unhealthy.
    #[serde(default)]
    pub retries: i64,
}

/// `rootfs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type", default, deserialize_with = "null_default")]
    pub kind: String,
    /// Digests of the uncompressed layers, bottom first.
    #[serde(default, deserialize_with = "null_default")]
    pub diff_ids: Vec<Digest>,
}

/// One `history` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The instruction that created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Whether this entry produced no layer.
    #[serde(default)]
    pub empty_layer: bool,
}

impl ImageConfig {
    /// Parses a config blob; `digest` names it in errors.
    pub fn parse(bytes: &[u8], digest: &Digest) -> Result<ImageConfig, Error> {
        serde_json::from_slice(bytes).map_err(|e| Error::InvalidConfig {
            digest: digest.clone(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_config_with_nulls_and_healthcheck() {
        let json = r#"{
          "architecture":"amd64","os":"linux","variant":null,
          "config":{"User":"app:app","Env":["PATH=/bin","A=b"],"Entrypoint":null,"Cmd":["bash"],
            "WorkingDir":"/srv","Labels":null,"ExposedPorts":{"8080/tcp":{}},"Volumes":{"/data":{}},
            "StopSignal":"SIGTERM","Shell":["/bin/sh","-c"],
            "Healthcheck":{"Test":["CMD-SHELL","curl -f localhost"],"Interval":30000000000,"Retries":3}},
          "rootfs":{"type":"layers","diff_ids":["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]},
          "history":[{"created_by":"/bin/sh -c #(nop) CMD [\"bash\"]","empty_layer":true}]
        }"#;
        let d = Digest::sha256_of(json.as_bytes());
        let c = ImageConfig::parse(json.as_bytes(), &d).unwrap();
        assert_eq!(c.config.user, "app:app");
        assert!(c.config.entrypoint.is_empty());
        assert_eq!(c.config.cmd, vec!["bash"]);
        assert!(c.config.labels.is_empty());
        assert!(c.config.exposed_ports.contains_key("8080/tcp"));
        assert_eq!(c.config.healthcheck.as_ref().unwrap().retries, 3);
        assert_eq!(c.config.stop_signal.as_deref(), Some("SIGTERM"));
        assert_eq!(c.rootfs.diff_ids.len(), 1);
        assert!(c.history[0].empty_layer);
    }

    #[test]
    fn parses_windows_fields_and_names_digest_on_error() {
        let json = br#"{"architecture":"amd64","os":"windows","os.version":"10.0.17763","os.features":["win32k"]}"#;
        let d = Digest::sha256_of(json);
        let c = ImageConfig::parse(json, &d).unwrap();
        assert_eq!(c.os_version.as_deref(), Some("10.0.17763"));
        let err = ImageConfig::parse(b"{", &d).unwrap_err();
        assert!(err.to_string().contains(&d.to_string()));
    }
}
