//! What a user asks for: the base, the name and tags, and the build options.

use nullspace_api::request::{ReadinessKind, ReadinessSpec};
use serde::{Deserialize, Serialize};

use nullspace_rootfs::runtime::Readiness;

use crate::error::BuildError;

/// Debian release used when `from_debian_image()` names none: the release our guest kernel and
/// init are tested against.
pub const DEFAULT_DEBIAN_VERSION: &str = "bookworm";

/// The one base a build starts from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum BaseSelector {
    /// `from_ubuntu_image(version)` → `ubuntu:<version>`.
    UbuntuImage(String),
    /// `from_debian_image([version])` → `debian:<version>` (default [`DEFAULT_DEBIAN_VERSION`]).
    DebianImage(Option<String>),
    /// `from_python_image(version)` → `python:<version>`.
    PythonImage(String),
    /// `from_node_image(version)` → `node:<version>`.
    NodeImage(String),
    /// `from_bun_image(version)` → `oven/bun:<version>`; the version is required.
    BunImage(String),
    /// `from_image(ref)`: any OCI image.
    Image(String),
    /// `from_base_image(ref)`: any OCI image, named as a base.
    BaseImage(String),
}

impl BaseSelector {
    /// The image reference this selector resolves to (before Docker Hub normalisation).
    pub fn image_reference(&self) -> Result<String, BuildError> {
        let version = |field: &str, v: &str| -> Result<String, BuildError> {
            let v = v.trim();
            if v.is_empty() {
                return Err(BuildError::InvalidRequest {
                    field: field.into(),
                    message: "a version is required (e.g. \"1.2\")".into(),
                });
            }
            if !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                || v.starts_with(['.', '-'])
                || v.len() > 128
            {
                return Err(BuildError::InvalidRequest {
                    field: field.into(),
                    message: format!("{v:?} is not a valid image tag"),
                });
            }
            Ok(v.to_string())
        };
        let reference = |field: &str, r: &str| -> Result<String, BuildError> {
            let r = r.trim();
            if r.is_empty() {
                return Err(BuildError::InvalidRequest {
                    field: field.into(),
                    message: "an image reference is required".into(),
                });
            }
            Ok(r.to_string())
        };
        Ok(match self {
            BaseSelector::UbuntuImage(v) => format!("ubuntu:{}", version("from_ubuntu_image", v)?),
            BaseSelector::DebianImage(v) => format!(
                "debian:{}",
                version(
                    "from_debian_image",
                    v.as_deref().unwrap_or(DEFAULT_DEBIAN_VERSION)
                )?
            ),
            BaseSelector::PythonImage(v) => format!("python:{}", version("from_python_image", v)?),
            BaseSelector::NodeImage(v) => format!("node:{}", version("from_node_image", v)?),
            BaseSelector::BunImage(v) => format!("oven/bun:{}", version("from_bun_image", v)?),
            BaseSelector::Image(r) => reference("from_image", r)?,
            BaseSelector::BaseImage(r) => reference("from_base_image", r)?,
        })
    }
}

/// A build request, as the API's JSON carries it (minus secrets, which travel beside it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRequest {
    /// Single-segment template name.
    pub name: String,
    /// Tags to point at the result; `["default"]` when the user gives none.
    pub tags: Vec<String>,
    /// The base.
    pub base: BaseSelector,
    /// Minimum rootfs size in MiB.
    pub disk_mb: Option<u64>,
    /// vCPUs for the build VM (recorded; used once builds boot a VM).
    pub cpu_count: Option<u32>,
    /// Memory for the build VM in MiB (recorded; used once builds boot a VM).
    pub memory_mb: Option<u32>,
    /// Whether build steps may reach the network.
    pub internet_access: bool,
    /// Bypass every cache.
    pub skip_cache: bool,
    /// The start command the template's sandboxes run, replacing the image's
    /// (`Entrypoint` + `Cmd`). Recorded in the runtime defaults; running it before a snapshot
    /// needs a build VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cmd: Option<String>,
    /// No start command, not even the image's `Entrypoint`/`Cmd`.
    pub no_start_cmd: bool,
    /// The readiness check, replacing one mapped from the image's healthcheck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<nullspace_rootfs::runtime::Readiness>,
}

impl BuildRequest {
    /// Applies the request's start command and readiness over the image's defaults.
    pub fn apply_runtime_overrides(
        &self,
        runtime: &mut nullspace_rootfs::runtime::RuntimeDefaults,
    ) {
        if let Some(cmd) = &self.start_cmd {
            runtime.start_cmd = Some(cmd.clone());
        }
        if self.no_start_cmd {
            // The image's HEALTHCHECK checks its main process; with none, it has nothing to check.
            runtime.start_cmd = None;
            runtime.readiness = None;
        }
        if let Some(readiness) = &self.readiness {
            runtime.readiness = Some(readiness.clone());
        }
    }

    /// A request with defaults for `name` from `base`.
    pub fn new(name: &str, base: BaseSelector) -> BuildRequest {
        BuildRequest {
            name: name.to_string(),
            tags: vec!["default".into()],
            base,
            disk_mb: None,
            cpu_count: None,
            memory_mb: None,
            internet_access: true,
            skip_cache: false,
            start_cmd: None,
            no_start_cmd: false,
            readiness: None,
        }
    }

    /// Checks names, tags and sizes; the error names the field.
    pub fn validate(&self) -> Result<(), BuildError> {
        self.validate_common()?;
        self.base.image_reference()?;
        Ok(())
    }

    /// [`BuildRequest::validate`] without the base (for builds whose base is not an image).
    pub fn validate_common(&self) -> Result<(), BuildError> {
        validate_name(&self.name)?;
        if self.tags.is_empty() {
            return Err(BuildError::InvalidRequest {
                field: "tags".into(),
                message: "must not be empty (leave it out for [\"default\"])".into(),
            });
        }
        for tag in &self.tags {
            validate_tag(tag)?;
        }
        if let Some(disk_mb) = self.disk_mb {
            check_disk_mb(disk_mb)?;
        }
        Ok(())
    }
}

/// The smallest `disk_mb` (spec §3.3: sandboxes take 512–131072 MiB).
pub const MIN_DISK_MB: u64 = 512;
/// The largest `disk_mb`.
pub const MAX_DISK_MB: u64 = 131_072;
/// The rootfs size without `disk_mb`: room for real work (a pip or npm tree); the image is
/// sparse, so unused space costs no host disk. A larger image grows to fit its contents.
pub const DEFAULT_DISK_MB: u64 = 2048;

/// Checks a rootfs size in MiB: [`MIN_DISK_MB`] to [`MAX_DISK_MB`].
pub fn check_disk_mb(disk_mb: u64) -> Result<(), BuildError> {
    if (MIN_DISK_MB..=MAX_DISK_MB).contains(&disk_mb) {
        return Ok(());
    }
    Err(BuildError::InvalidRequest {
        field: "disk_mb".into(),
        message: format!("{disk_mb} is out of range {MIN_DISK_MB}..={MAX_DISK_MB} MiB"),
    })
}

/// A template name: one segment, lower-case letters, digits, `.`, `_`, `-`, 1–63 characters,
/// starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), BuildError> {
    let bad = |message: String| BuildError::InvalidRequest {
        field: "name".into(),
        message,
    };
    if name.contains('/') || name.contains(':') {
        return Err(bad(format!(
            "{name:?} must be a single-segment name (no namespace, no tag; tags go in --tag)"
        )));
    }
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if !valid {
        return Err(bad(format!(
            "{name:?}: use 1-63 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"
        )));
    }
    Ok(())
}

/// A tag: 1–128 of letters, digits, `.`, `_`, `-`, not starting with `.` or `-`, and not a
/// build id (`tb_...`), which refs reserve for exact builds.
pub fn validate_tag(tag: &str) -> Result<(), BuildError> {
    let valid = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && !tag.starts_with("tb_")
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !valid {
        return Err(BuildError::InvalidRequest {
            field: "tags".into(),
            message: format!(
                "{tag:?}: use 1-128 letters, digits, '.', '_' or '-', not starting with '.', '-' or 'tb_'"
            ),
        });
    }
    Ok(())
}

fn invalid(field: &str, message: impl std::fmt::Display) -> BuildError {
    BuildError::InvalidRequest {
        field: field.to_string(),
        message: message.to_string(),
    }
}

/// Milliseconds between readiness attempts unless the request says.
pub const DEFAULT_PROBE_INTERVAL_MS: u64 = 500;
/// Milliseconds one readiness attempt may take unless the request says.
pub const DEFAULT_PROBE_TIMEOUT_MS: u64 = 5_000;
/// How long readiness may take, unless the request gives `retries`.
pub const DEFAULT_READY_WITHIN_MS: u64 = 60_000;

/// Checks a readiness request (`{kind: tcp, port}`, `{kind: http, url}` with the
/// [`check_probe_url`] rules, `{kind: file, path}`, `{kind: process, name}`, `{kind: timeout,
/// timeout_ms}`, `{kind: command, command}`, each with optional `interval_ms`, `timeout_secs`
/// per attempt, `startup_grace_secs` and `retries`) and fills in the defaults. Errors name
/// `field.<name>`.
pub fn parse_readiness(spec: &ReadinessSpec, field: &str) -> Result<Readiness, BuildError> {
    let sub = |name: &str| format!("{field}.{name}");
    let (kind, own): (&str, &str) = match spec.kind {
        ReadinessKind::Tcp => ("tcp", "port"),
        ReadinessKind::Http => ("http", "url"),
        ReadinessKind::File => ("file", "path"),
        ReadinessKind::Process => ("process", "name"),
        ReadinessKind::Timeout => ("timeout", "timeout_ms"),
        ReadinessKind::Command => ("command", "command"),
    };
    let specific = [
        ("port", spec.port.is_some()),
        ("url", spec.url.is_some()),
        ("path", spec.path.is_some()),
        ("name", spec.name.is_some()),
        ("timeout_ms", spec.timeout_ms.is_some()),
        ("command", spec.command.is_some()),
    ];
    if let Some((other, _)) = specific.iter().find(|(name, given)| *given && *name != own) {
        return Err(invalid(
            &sub(other),
            format!("unknown field for kind {kind}"),
        ));
    }
    let text = |name: &str, value: &Option<String>| -> Result<String, BuildError> {
        value
            .as_deref()
            .filter(|s| !s.trim().is_empty() && !s.contains('\0'))
            .map(str::to_string)
            .ok_or_else(|| {
                invalid(
                    &sub(name),
                    format!("is required for kind {kind} (a non-empty string)"),
                )
            })
    };
    let mut readiness = Readiness {
        kind: kind.to_string(),
        interval_ms: spec.interval_ms.unwrap_or(DEFAULT_PROBE_INTERVAL_MS).max(1),
        timeout_ms: spec
            .timeout_secs
            .map(|s| s.saturating_mul(1000))
            .unwrap_or(DEFAULT_PROBE_TIMEOUT_MS),
        start_period_ms: spec.startup_grace_secs.unwrap_or(0).saturating_mul(1000),
        retries: 0,
        ..Readiness::default()
    };
    readiness.retries = match spec.retries {
        Some(r) => u32::try_from(r).map_err(|_| invalid(&sub("retries"), "is too large"))?,
        None => u32::try_from(DEFAULT_READY_WITHIN_MS / readiness.interval_ms).unwrap_or(u32::MAX),
    };
    match spec.kind {
        ReadinessKind::Tcp => {
            let port = spec
                .port
                .filter(|p| (1..=65535).contains(p))
                .ok_or_else(|| invalid(&sub("port"), "is required: a TCP port 1-65535"))?;
            readiness.port = u16::try_from(port).ok();
        }
        ReadinessKind::Http => {
            let url = text("url", &spec.url)?;
            check_probe_url(&url).map_err(|why| invalid(&sub("url"), format!("{url:?}: {why}")))?;
            readiness.url = Some(url);
        }
        ReadinessKind::File => {
            let path = text("path", &spec.path)?;
            if !path.starts_with('/') {
                return Err(invalid(&sub("path"), "must be absolute"));
            }
            readiness.path = Some(path);
        }
        ReadinessKind::Process => readiness.name = Some(text("name", &spec.name)?),
        ReadinessKind::Timeout => {
            readiness.wait_ms = Some(
                spec.timeout_ms
                    .ok_or_else(|| invalid(&sub("timeout_ms"), "is required for kind timeout"))?,
            )
        }
        ReadinessKind::Command => readiness.command = text("command", &spec.command)?,
    }
    Ok(readiness)
}

/// The rules of `wait_for_url` (spec §1.5): `http://`, host `localhost`, `127.0.0.1` or
/// `0.0.0.0`, an explicit port, no query string, fragment or credentials.
pub fn check_probe_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are accepted")?;
    if rest.contains('?') {
        return Err("query strings are not allowed");
    }
    if rest.contains('#') {
        return Err("fragments are not allowed");
    }
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err("embedded credentials are not allowed");
    }
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or("the port must be explicit")?;
    if !["localhost", "127.0.0.1", "0.0.0.0"].contains(&host) {
        return Err("the host must be localhost, 127.0.0.1 or 0.0.0.0");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err("the port is invalid"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_map_to_their_images() {
        let cases = [
            (BaseSelector::UbuntuImage("22.04".into()), "ubuntu:22.04"),
            (BaseSelector::DebianImage(None), "debian:bookworm"),
            (
                BaseSelector::DebianImage(Some("trixie".into())),
                "debian:trixie",
            ),
            (BaseSelector::PythonImage("3.12".into()), "python:3.12"),
            (BaseSelector::NodeImage("20".into()), "node:20"),
            (BaseSelector::BunImage("1.2".into()), "oven/bun:1.2"),
            (
                BaseSelector::Image("r.example/a/b:1".into()),
                "r.example/a/b:1",
            ),
        ];
        for (selector, expected) in cases {
            assert_eq!(selector.image_reference().unwrap(), expected);
        }
    }

    #[test]
    fn bun_needs_a_version() {
        let err = BaseSelector::BunImage(" ".into())
            .image_reference()
            .unwrap_err();
        assert!(err.to_string().contains("from_bun_image"), "{err}");
    }

    #[test]
    fn disk_sizes_are_those_sandboxes_take() {
        assert!(check_disk_mb(MIN_DISK_MB).is_ok() && check_disk_mb(MAX_DISK_MB).is_ok());
        let err = check_disk_mb(MAX_DISK_MB + 1).unwrap_err().to_string();
        assert!(
            err.contains("disk_mb") && err.contains("512..=131072"),
            "{err}"
        );
        assert!(check_disk_mb(16 * 1024 * 1024).is_err());
        assert!(check_disk_mb(MIN_DISK_MB - 1).is_err());
        assert!(check_disk_mb(0).is_err());
        const { assert!(DEFAULT_DISK_MB >= MIN_DISK_MB) };
    }

    #[test]
    fn names_are_single_segment() {
        assert!(validate_name("python-dev").is_ok());
        assert!(validate_name("acme/python")
            .unwrap_err()
            .to_string()
            .contains("single-segment"));
        assert!(validate_name("app:1").is_err());
        assert!(validate_name("Upper").is_err());
        assert!(validate_name("").is_err());
    }

    #[test]
    fn tags_reject_empty_lists_and_build_ids() {
        let mut request = BuildRequest::new("demo", BaseSelector::DebianImage(None));
        request.tags.clear();
        assert!(request.validate().unwrap_err().to_string().contains("tags"));
        assert!(validate_tag("tb_123").is_err());
        assert!(validate_tag("stable").is_ok());
    }
}
