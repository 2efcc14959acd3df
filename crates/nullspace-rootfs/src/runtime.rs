//! Runtime defaults from an image config, row by row as the base-images page says.
//!
//! | OCI data | becomes |
//! |---|---|
//! | `Env` | `KEY=VALUE` entries → env defaults; malformed ones skipped with a warning |
//! | `User` | trimmed, non-empty → default user |
//! | `WorkingDir` | trimmed, non-empty → default workdir |
//! | `Entrypoint` + `Cmd` | concatenated and shell-escaped into one start command |
//! | `Labels`, `ExposedPorts`, `Volumes` | metadata only |
//! | `Healthcheck` | metadata, mapped to command readiness when safe |
//!
//! Stop signal, shell and annotations are deliberately not imported.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::shell;

/// The parts of an image config (Docker or OCI) that become runtime defaults or metadata.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ImageRuntimeConfig {
    /// `Env`.
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    /// `User`.
    #[serde(rename = "User", default)]
    pub user: Option<String>,
    /// `WorkingDir`.
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    /// `Entrypoint`.
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    /// `Labels`.
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// `ExposedPorts` (keys only matter).
    #[serde(rename = "ExposedPorts", default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    /// `Volumes` (keys only matter).
    #[serde(rename = "Volumes", default)]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    /// `Healthcheck` (a Docker extension to the OCI config).
    #[serde(rename = "Healthcheck", default)]
    pub healthcheck: Option<Healthcheck>,
}

/// Docker's healthcheck block; durations in nanoseconds, zero meaning "Docker's default".
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", arg...]`, `["CMD-SHELL", command]`, or empty (inherit).
    #[serde(rename = "Test", default)]
    pub test: Option<Vec<String>>,
    /// Time between checks.
    #[serde(rename = "Interval", default)]
    pub interval: Option<i64>,
    /// Time a check may take.
    #[serde(rename = "Timeout", default)]
    pub timeout: Option<i64>,
    /// Grace period after start when failures don't count.
    #[serde(rename = "StartPeriod", default)]
    pub start_period: Option<i64>,
    /// Time between checks during the start period.
    #[serde(rename = "StartInterval", default)]
    pub start_interval: Option<i64>,
    /// Consecutive failures before unhealthy.
    #[serde(rename = "Retries", default)]
    pub retries: Option<i64>,
}

/// The top level of an image config: only `config` matters here.
#[derive(Deserialize)]
struct ConfigDocument {
    #[serde(default)]
    config: Option<ImageRuntimeConfig>,
}

/// A readiness check of a template: mapped from a healthcheck (`command`), or requested with
/// the start command (`tcp`, `http`, `file`, `process`, `timeout`, `command`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `command`, `tcp`, `http`, `file`, `process` or `timeout`.
    pub kind: String,
    /// `command`: shell command run inside the guest; exit status 0 means ready.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub command: String,
    /// `tcp`: the port something must listen on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `http`: the URL a GET of which must succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `file`: the path that must exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `process`: the process name that must run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `timeout`: milliseconds to wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    /// Milliseconds between attempts.
    pub interval_ms: u64,
    /// Milliseconds one attempt may take.
    pub timeout_ms: u64,
    /// Milliseconds after start during which failures don't count.
    pub start_period_ms: u64,
    /// Failures tolerated after the start period before the build fails.
    pub retries: u32,
}

/// The healthcheck as kept in template metadata, with its readiness mapping (if safe).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthcheckMetadata {
    /// The healthcheck's test, as in the image.
    pub test: Vec<String>,
    /// Interval in nanoseconds, as in the image (0: default).
    pub interval_ns: i64,
    /// Timeout in nanoseconds, as in the image (0: default).
    pub timeout_ns: i64,
    /// Start period in nanoseconds, as in the image.
    pub start_period_ns: i64,
    /// Retries, as in the image (0: default).
    pub retries: i64,
    /// The readiness check it maps to, or `None` when the mapping would not be safe.
    pub mapped_readiness: Option<Readiness>,
    /// Why it was not mapped, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unmapped_reason: Option<String>,
}

/// OCI metadata retained on the template: hints only, nothing here acts by itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OciMetadata {
    /// Image labels.
    pub labels: BTreeMap<String, String>,
    /// Exposed ports such as `8080/tcp`; they publish nothing.
    pub exposed_ports: Vec<String>,
    /// Volume paths; no persistent volume is created.
    pub volumes: Vec<String>,
    /// The healthcheck, if any.
    pub healthcheck: Option<HealthcheckMetadata>,
}

/// Runtime defaults for sandboxes started from the template.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeDefaults {
    /// Env defaults in image order; a later duplicate key wins.
    pub env: BTreeMap<String, String>,
    /// Default user (`name`, `uid`, `user:group` forms).
    pub user: Option<String>,
    /// Default working directory.
    pub workdir: Option<String>,
    /// Start command (`Entrypoint` + `Cmd`, shell-escaped).
    pub start_cmd: Option<String>,
    /// Readiness, from a safely mapped healthcheck.
    pub readiness: Option<Readiness>,
}

/// What importing an image config produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImportedConfig {
    /// Runtime defaults.
    pub runtime: RuntimeDefaults,
    /// Metadata kept as hints.
    pub metadata: OciMetadata,
    /// Things skipped, for the build log (e.g. malformed env entries).
    pub warnings: Vec<String>,
}

/// Errors reading an image config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config blob is not JSON of the expected shape.
    #[error("image config is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Docker's defaults for a healthcheck's zero fields.
const DEFAULT_INTERVAL_NS: i64 = 30_000_000_000;
const DEFAULT_TIMEOUT_NS: i64 = 30_000_000_000;
const DEFAULT_RETRIES: i64 = 3;

/// Reads an image config blob into runtime defaults and metadata.
pub fn import_config(raw: &[u8]) -> Result<ImportedConfig, ConfigError> {
    let document: ConfigDocument = serde_json::from_slice(raw)?;
    Ok(import_runtime_config(document.config.unwrap_or_default()))
}

/// Maps the runtime part of an image config (see the module docs for the rules).
pub fn import_runtime_config(config: ImageRuntimeConfig) -> ImportedConfig {
    let mut warnings = Vec::new();
    let mut env = BTreeMap::new();
    for entry in config.env.unwrap_or_default() {
        match entry.split_once('=') {
            Some((key, value)) if !key.is_empty() => {
                env.insert(key.to_string(), value.to_string());
            }
            _ => warnings.push(format!(
                "skipped malformed Env entry {entry:?}: expected KEY=VALUE"
            )),
        }
    }
    let trimmed = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let argv: Vec<String> = config
        .entrypoint
        .unwrap_or_default()
        .into_iter()
        .chain(config.cmd.unwrap_or_default())
        .collect();
    let start_cmd = (!argv.is_empty()).then(|| shell::join(argv.iter().map(String::as_str)));
    let healthcheck = config.healthcheck.and_then(map_healthcheck);
    if let Some(reason) = healthcheck.as_ref().and_then(|h| h.unmapped_reason.clone()) {
        warnings.push(format!("healthcheck kept as metadata only: {reason}"));
    }
    let runtime = RuntimeDefaults {
        env,
        user: trimmed(config.user),
        workdir: trimmed(config.working_dir),
        start_cmd,
        readiness: healthcheck
            .as_ref()
            .and_then(|h| h.mapped_readiness.clone()),
    };
    let metadata = OciMetadata {
        labels: config.labels.unwrap_or_default(),
        exposed_ports: config
            .exposed_ports
            .unwrap_or_default()
            .into_keys()
            .collect(),
        volumes: config.volumes.unwrap_or_default().into_keys().collect(),
        healthcheck,
    };
    ImportedConfig {
        runtime,
        metadata,
        warnings,
    }
}

/// Keeps a healthcheck as metadata and maps it to a readiness command when that is safe:
/// `CMD` (argv, shell-escaped) or `CMD-SHELL` (run by `sh -c`) with a non-empty command free of
/// NUL bytes, and sane durations. `NONE` and an empty test mean no healthcheck.
fn map_healthcheck(check: Healthcheck) -> Option<HealthcheckMetadata> {
    let test = check.test.clone().unwrap_or_default();
    let kind = test.first().map(String::as_str);
    if kind.is_none() || kind == Some("NONE") {
        return None;
    }
    let interval_ns = check.interval.unwrap_or(0);
    let timeout_ns = check.timeout.unwrap_or(0);
    let start_period_ns = check.start_period.unwrap_or(0);
    let retries = check.retries.unwrap_or(0);
    let command = match kind {
        Some("CMD") if test.len() > 1 => Ok(shell::join(test[1..].iter().map(String::as_str))),
        Some("CMD") => Err("CMD healthcheck has no command".to_string()),
        Some("CMD-SHELL") if test.len() == 2 && !test[1].trim().is_empty() => Ok(test[1].clone()),
        Some("CMD-SHELL") => Err("CMD-SHELL healthcheck needs exactly one command string".into()),
        Some(other) => Err(format!("unknown healthcheck test type {other:?}")),
        None => Err("empty healthcheck".into()),
    }
    .and_then(|command| {
        if command.contains('\0') {
            Err("healthcheck command contains a NUL byte".into())
        } else if interval_ns < 0 || timeout_ns < 0 || start_period_ns < 0 || retries < 0 {
            Err("healthcheck has a negative duration or retry count".into())
        } else {
            Ok(command)
        }
    });
    let ms = |ns: i64, default: i64| (if ns == 0 { default } else { ns } / 1_000_000) as u64;
    let (mapped_readiness, unmapped_reason) = match command {
        Ok(command) => (
            Some(Readiness {
                kind: "command".into(),
                command,
                interval_ms: ms(interval_ns, DEFAULT_INTERVAL_NS),
                timeout_ms: ms(timeout_ns, DEFAULT_TIMEOUT_NS),
                start_period_ms: ms(start_period_ns, 0),
                retries: u32::try_from(if retries == 0 {
                    DEFAULT_RETRIES
                } else {
                    retries
                })
                .unwrap_or(u32::MAX),
                ..Readiness::default()
            }),
            None,
        ),
        Err(reason) => (None, Some(reason)),
    };
    Some(HealthcheckMetadata {
        test,
        interval_ns,
        timeout_ns,
        start_period_ns,
        retries,
        mapped_readiness,
        unmapped_reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn import(json: &str) -> ImportedConfig {
        import_config(json.as_bytes()).unwrap()
    }

    #[test]
    fn env_user_workdir_and_start_command() {
        let got = import(
            r#"{"config":{"Env":["PATH=/usr/bin","EMPTY=","A=b=c","broken","=nokey"],
            "User":"  1000:1000 ","WorkingDir":" /srv/app ",
            "Entrypoint":["/bin/sh","-c"],"Cmd":["echo 'hi' && exec \"$0\""]}}"#,
        );
        assert_eq!(got.runtime.env["PATH"], "/usr/bin");
        assert_eq!(got.runtime.env["EMPTY"], "");
        assert_eq!(got.runtime.env["A"], "b=c");
        assert_eq!(got.runtime.env.len(), 3);
        assert_eq!(got.warnings.len(), 2, "{:?}", got.warnings);
        assert!(got.warnings[0].contains("broken"));
        assert_eq!(got.runtime.user.as_deref(), Some("1000:1000"));
        assert_eq!(got.runtime.workdir.as_deref(), Some("/srv/app"));
        assert_eq!(
            got.runtime.start_cmd.as_deref(),
            Some(r#"/bin/sh -c 'echo '\''hi'\'' && exec "$0"'"#)
        );
    }

    #[test]
    fn blank_user_and_workdir_are_not_defaults() {
        let got = import(r#"{"config":{"User":"   ","WorkingDir":""}}"#);
        assert_eq!(got.runtime.user, None);
        assert_eq!(got.runtime.workdir, None);
        assert_eq!(got.runtime.start_cmd, None);
    }

    #[test]
    fn metadata_is_kept_as_hints() {
        let got = import(
            r#"{"config":{"Labels":{"a":"1"},"ExposedPorts":{"8080/tcp":{},"53/udp":{}},
            "Volumes":{"/data":{}},"StopSignal":"SIGTERM","Shell":["/bin/bash","-c"]}}"#,
        );
        assert_eq!(got.metadata.labels["a"], "1");
        assert_eq!(got.metadata.exposed_ports, ["53/udp", "8080/tcp"]);
        assert_eq!(got.metadata.volumes, ["/data"]);
    }

    #[test]
    fn healthcheck_cmd_shell_maps_with_timings() {
        let got = import(
            r#"{"config":{"Healthcheck":{"Test":["CMD-SHELL","curl -f localhost:8080 || exit 1"],
            "Interval":5000000000,"Timeout":2000000000,"StartPeriod":1000000000,"Retries":4}}}"#,
        );
        let readiness = got.runtime.readiness.unwrap();
        assert_eq!(readiness.command, "curl -f localhost:8080 || exit 1");
        assert_eq!(
            (
                readiness.interval_ms,
                readiness.timeout_ms,
                readiness.start_period_ms,
                readiness.retries
            ),
            (5000, 2000, 1000, 4)
        );
    }

    #[test]
    fn healthcheck_cmd_is_escaped_and_defaults_apply() {
        let got =
            import(r#"{"config":{"Healthcheck":{"Test":["CMD","test","-f","/tmp/ready now"]}}}"#);
        let readiness = got.runtime.readiness.unwrap();
        assert_eq!(readiness.command, "test -f '/tmp/ready now'");
        assert_eq!((readiness.interval_ms, readiness.retries), (30_000, 3));
    }

    #[test]
    fn unsafe_or_disabled_healthchecks_stay_metadata() {
        let none = import(r#"{"config":{"Healthcheck":{"Test":["NONE"]}}}"#);
        assert_eq!(none.metadata.healthcheck, None);
        assert_eq!(none.runtime.readiness, None);
        let bad = import(r#"{"config":{"Healthcheck":{"Test":["CMD"]}}}"#);
        assert!(bad
            .metadata
            .healthcheck
            .as_ref()
            .unwrap()
            .mapped_readiness
            .is_none());
        assert_eq!(bad.runtime.readiness, None);
        assert!(bad.warnings.iter().any(|w| w.contains("metadata only")));
    }
}
