//! The build request body (spec §3.2), parsed strictly: unknown fields, and fields this server
//! cannot execute yet, are rejected by name rather than silently ignored.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use nullspace_build::request::{validate_name, validate_tag};
use nullspace_build::BaseSelector;
use nullspace_oci::Credentials;

use crate::error::ApiError;

/// Where a build starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Base {
    /// An OCI image (a `base_image` ref or a selector such as `debian_image`).
    Image {
        /// The selector.
        selector: BaseSelector,
    },
    /// An existing template of the same owner (`from_template`).
    Template {
        /// Its ref (`name`, `name:tag`, `name:tb_...`, `namespace/name:tag`, `tmpl_...`).
        reference: String,
    },
}

impl Base {
    /// The source kind (`oci_import`, `template_base`).
    pub fn source_kind(&self) -> &'static str {
        match self {
            Base::Image { .. } => "oci_import",
            Base::Template { .. } => "template_base",
        }
    }
}

/// A parsed, validated build request, free of secrets: this is what the store keeps as the
/// build's definition and what a retry replays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildDefinition {
    /// Single-segment template name.
    pub name: String,
    /// Tags (never empty).
    pub tags: Vec<String>,
    /// The base.
    pub base: Base,
    /// Minimum rootfs size in MiB.
    pub disk_mb: Option<u64>,
    /// vCPUs (recorded).
    pub cpu_count: Option<u32>,
    /// Memory in MiB (recorded).
    pub memory_mb: Option<u32>,
    /// Network for build steps.
    pub internet_access: bool,
    /// Bypass every cache.
    pub skip_cache: bool,
    /// `native` (the only backend this server runs).
    pub build_backend: String,
    /// Kind of the base-image credentials the request carried (`basic`, `gcp`, `ecr`), never
    /// the credentials themselves.
    pub base_image_auth_kind: Option<String>,
}

impl BuildDefinition {
    /// The engine's request for an image base (`None` for template bases).
    pub fn engine_request(&self) -> nullspace_build::BuildRequest {
        let selector = match &self.base {
            Base::Image { selector } => selector.clone(),
            // Template bases never reach the image importer; the selector is a placeholder.
            Base::Template { reference } => BaseSelector::BaseImage(reference.clone()),
        };
        let mut request = nullspace_build::BuildRequest::new(&self.name, selector);
        request.tags = self.tags.clone();
        request.disk_mb = self.disk_mb;
        request.cpu_count = self.cpu_count;
        request.memory_mb = self.memory_mb;
        request.internet_access = self.internet_access;
        request.skip_cache = self.skip_cache;
        request
    }

    /// The image reference of an image base, as the user would read it.
    pub fn base_description(&self) -> String {
        match &self.base {
            Base::Image { selector } => selector
                .image_reference()
                .unwrap_or_else(|_| format!("{selector:?}")),
            Base::Template { reference } => format!("template {reference}"),
        }
    }
}

/// Request-time base-image credentials; `Debug` never shows them.
pub struct BaseImageAuth(pub Credentials);

impl std::fmt::Debug for BaseImageAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BaseImageAuth({})", self.0.kind())
    }
}

/// Fields accepted and executed.
const SUPPORTED: &[&str] = &[
    "name",
    "alias",
    "tags",
    "base_image",
    "base",
    "base_image_auth",
    "disk_mb",
    "cpu_count",
    "memory_mb",
    "internet_access",
    "skip_cache",
    "build_backend",
];

/// Fields of the contract this server does not execute yet, and why. An empty value (`null`,
/// `[]`, `{}`, `""`) is accepted as absent.
const NOT_YET: &[(&str, &str)] = &[
    ("dockerfile", "Dockerfile builds need the buildkit backend, which this server does not run yet"),
    ("steps", "declarative build steps need a build VM, which this server does not run yet"),
    ("start_cmd", "start commands run in a build VM, which this server does not run yet"),
    ("ready_cmd", "readiness checks run in a build VM, which this server does not run yet"),
    ("readiness", "readiness checks run in a build VM, which this server does not run yet"),
    ("runtime_envs", "runtime env defaults from the builder are not supported yet (image Env is imported)"),
    ("build_envs", "build envs are only used by build steps, which this server does not run yet"),
    ("user", "setting the default user from the builder is not supported yet (image User is imported)"),
    ("workdir", "setting the default workdir from the builder is not supported yet (image WorkingDir is imported)"),
    ("build_secrets", "build secrets are for BuildKit Dockerfile builds; native builds reject them"),
    ("registry_auth", "registry_auth is for BuildKit Dockerfile builds; use base_image_auth for image imports"),
    ("build_context", "build-context uploads are for copy steps and Dockerfiles, which this server does not run yet"),
];

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

fn string(field: &str, value: &Value) -> Result<String, ApiError> {
    value
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| ApiError::invalid(field, "must be a string"))
}

fn opt_u64(field: &str, value: Option<&Value>) -> Result<Option<u64>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(field, "must be a non-negative integer")),
    }
}

fn opt_u32(field: &str, value: Option<&Value>) -> Result<Option<u32>, ApiError> {
    opt_u64(field, value)?
        .map(|v| u32::try_from(v).map_err(|_| ApiError::invalid(field, "is too large")))
        .transpose()
}

fn opt_bool(field: &str, value: Option<&Value>, default: bool) -> Result<bool, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid(field, "must be a boolean")),
    }
}

/// Parses a `base` selector object: `{"kind": "debian_image", "value": "bookworm"}`; kinds are
/// `ubuntu_image`, `debian_image`, `python_image`, `node_image`, `bun_image`, `image`,
/// `base_image` and `template`.
fn parse_base(value: &Value) -> Result<Base, ApiError> {
    let object = value
        .as_object()
        .ok_or_else(|| ApiError::invalid("base", "must be an object {kind, value}"))?;
    for key in object.keys() {
        if key != "kind" && key != "value" {
            return Err(ApiError::invalid(
                &format!("base.{key}"),
                "unknown field (expected kind and value)",
            ));
        }
    }
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("base.kind", "is required"))?;
    let value = match object.get("value") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::invalid("base.value", "must be a string")),
    };
    let required = |what: &str| {
        value
            .clone()
            .ok_or_else(|| ApiError::invalid("base.value", format!("{kind} needs {what}")))
    };
    let selector =
        match kind {
            "ubuntu_image" => BaseSelector::UbuntuImage(required("a version")?),
            "debian_image" => BaseSelector::DebianImage(value.clone()),
            "python_image" => BaseSelector::PythonImage(required("a version")?),
            "node_image" => BaseSelector::NodeImage(required("a version")?),
            "bun_image" => BaseSelector::BunImage(required("a version (e.g. \"1.2\")")?),
            "image" => BaseSelector::Image(required("an image reference")?),
            "base_image" => BaseSelector::BaseImage(required("an image reference")?),
            "template" => {
                let reference = required("a template ref")?;
                if reference.trim().is_empty() {
                    return Err(ApiError::invalid(
                        "base.value",
                        "a template ref is required",
                    ));
                }
                return Ok(Base::Template { reference });
            }
            "dockerfile" => return Err(ApiError::invalid(
                "base.kind",
                "Dockerfile builds need the buildkit backend, which this server does not run yet",
            )),
            other => {
                return Err(ApiError::invalid(
                    "base.kind",
                    format!("unknown base kind {other:?}"),
                ))
            }
        };
    Ok(Base::Image { selector })
}

/// Parses `base_image_auth`: `{username, password}` (kind `basic`), `{kind: "gcp",
/// service_account_json}` or `{kind: "ecr", access_key_id, secret_access_key, region}`.
pub fn parse_auth(value: &Value) -> Result<Option<BaseImageAuth>, ApiError> {
    if value.is_null() {
        return Ok(None);
    }
    let object = value
        .as_object()
        .ok_or_else(|| ApiError::invalid("base_image_auth", "must be an object"))?;
    let field = |name: &str| -> Result<String, ApiError> {
        let text = object.get(name).and_then(Value::as_str).ok_or_else(|| {
            ApiError::invalid(&format!("base_image_auth.{name}"), "is required (a string)")
        })?;
        if text.is_empty() {
            return Err(ApiError::invalid(
                &format!("base_image_auth.{name}"),
                "must not be empty",
            ));
        }
        Ok(text.to_string())
    };
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("basic");
    let allowed: &[&str] = match kind {
        "basic" => &["kind", "username", "password"],
        "gcp" => &["kind", "service_account_json"],
        "ecr" => &["kind", "access_key_id", "secret_access_key", "region"],
        other => {
            return Err(ApiError::invalid(
                "base_image_auth.kind",
                format!("unknown kind {other:?} (basic, gcp or ecr)"),
            ))
        }
    };
    if let Some(unknown) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            &format!("base_image_auth.{unknown}"),
            format!("unknown field for kind {kind}"),
        ));
    }
    let credentials = match kind {
        "gcp" => Credentials::gcp(field("service_account_json")?),
        "ecr" => Credentials::ecr(
            field("access_key_id")?,
            field("secret_access_key")?,
            field("region")?,
        ),
        _ => Credentials::basic(field("username")?, field("password")?),
    };
    Ok(Some(BaseImageAuth(credentials)))
}

/// Generates a name when the request has neither `name` nor `alias`.
fn generated_name() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    let suffix: String = (0..8)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect();
    format!("template-{suffix}")
}

/// Parses and validates a build request body. The credentials come back beside the
/// definition, never inside it.
pub fn parse_build_request(
    body: &Value,
) -> Result<(BuildDefinition, Option<BaseImageAuth>), ApiError> {
    let object: &Map<String, Value> = body
        .as_object()
        .ok_or_else(|| ApiError::invalid_body("the request body must be a JSON object"))?;
    for key in object.keys() {
        if !SUPPORTED.contains(&key.as_str()) && !NOT_YET.iter().any(|(name, _)| name == key) {
            return Err(ApiError::invalid(key, "unknown field"));
        }
    }
    for (field, why) in NOT_YET {
        if object.get(*field).is_some_and(|value| !is_empty(value)) {
            return Err(ApiError::invalid(field, format!("not supported: {why}")));
        }
    }
    let name = match (object.get("name"), object.get("alias")) {
        (Some(v), _) if !v.is_null() => string("name", v)?,
        (_, Some(v)) if !v.is_null() => string("alias", v)?,
        _ => generated_name(),
    };
    validate_name(&name).map_err(|e| ApiError::invalid("name", strip(&e.to_string(), "name")))?;
    let tags = match object.get("tags") {
        None | Some(Value::Null) => vec!["default".to_string()],
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(ApiError::invalid(
                    "tags",
                    "must not be empty (leave it out for [\"default\"])",
                ));
            }
            let mut tags = Vec::new();
            for item in items {
                let tag = string("tags", item)?;
                validate_tag(&tag)
                    .map_err(|e| ApiError::invalid("tags", strip(&e.to_string(), "tags")))?;
                if !tags.contains(&tag) {
                    tags.push(tag);
                }
            }
            tags
        }
        Some(_) => return Err(ApiError::invalid("tags", "must be a list of strings")),
    };
    let base = match (object.get("base_image"), object.get("base")) {
        (Some(image), None) if !image.is_null() => {
            let reference = string("base_image", image)?;
            if reference.trim().is_empty() {
                return Err(ApiError::invalid("base_image", "must not be empty"));
            }
            Base::Image {
                selector: BaseSelector::Image(reference),
            }
        }
        (None, Some(base)) if !base.is_null() => parse_base(base)?,
        (Some(a), Some(b)) if !a.is_null() && !b.is_null() => {
            return Err(ApiError::invalid(
                "base",
                "choose one base: base_image or base, not both",
            ))
        }
        _ => {
            return Err(ApiError::invalid(
                "base_image",
                "a base is required: base_image (an OCI ref) or base {kind, value}",
            ))
        }
    };
    if let Base::Image { selector } = &base {
        let reference = selector
            .image_reference()
            .map_err(|e| ApiError::invalid_body(e.to_string()))?;
        nullspace_oci::Reference::parse(&reference)
            .map_err(|e| ApiError::invalid("base_image", e))?;
    }
    let disk_mb = opt_u64("disk_mb", object.get("disk_mb"))?;
    if let Some(disk) = disk_mb {
        if !(1..=16 * 1024 * 1024).contains(&disk) {
            return Err(ApiError::invalid(
                "disk_mb",
                format!("{disk} is out of range 1..=16777216"),
            ));
        }
    }
    let cpu_count = opt_u32("cpu_count", object.get("cpu_count"))?;
    if cpu_count == Some(0) {
        return Err(ApiError::invalid("cpu_count", "must be at least 1"));
    }
    let memory_mb = opt_u32("memory_mb", object.get("memory_mb"))?;
    if memory_mb == Some(0) {
        return Err(ApiError::invalid("memory_mb", "must be at least 1"));
    }
    let internet_access = opt_bool("internet_access", object.get("internet_access"), true)?;
    let skip_cache = opt_bool("skip_cache", object.get("skip_cache"), false)?;
    let build_backend = match object.get("build_backend") {
        None | Some(Value::Null) => "native".to_string(),
        Some(Value::String(s)) if s == "native" => s.clone(),
        Some(Value::String(s)) if s == "buildkit" => {
            return Err(ApiError::invalid(
                "build_backend",
                "buildkit serves Dockerfile builds, which this server does not run yet; image and template imports use native",
            ))
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "build_backend",
                "must be \"native\" or \"buildkit\"",
            ))
        }
    };
    let auth = match object.get("base_image_auth") {
        Some(value) => parse_auth(value)?,
        None => None,
    };
    if auth.is_some() && matches!(base, Base::Template { .. }) {
        return Err(ApiError::invalid(
            "base_image_auth",
            "a template base needs no registry credentials",
        ));
    }
    let definition = BuildDefinition {
        name,
        tags,
        base,
        disk_mb,
        cpu_count,
        memory_mb,
        internet_access,
        skip_cache,
        build_backend,
        base_image_auth_kind: auth.as_ref().map(|a| a.0.kind().to_string()),
    };
    Ok((definition, auth))
}

/// Drops the engine's `invalid request: <field>: ` prefix so the field is named once.
fn strip(message: &str, field: &str) -> String {
    message
        .strip_prefix(&format!("invalid request: {field}: "))
        .unwrap_or(message)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_base_image() {
        let (d, auth) =
            parse_build_request(&json!({"name": "demo", "base_image": "debian:bookworm"})).unwrap();
        assert_eq!(d.tags, vec!["default"]);
        assert!(d.internet_access);
        assert!(auth.is_none());
        assert_eq!(d.build_backend, "native");
    }

    #[test]
    fn unknown_and_unsupported_fields_are_named() {
        let e =
            parse_build_request(&json!({"name": "d", "base_image": "x", "bogus": 1})).unwrap_err();
        assert!(e.message.contains("bogus"), "{e}");
        let e = parse_build_request(
            &json!({"name": "d", "base_image": "x", "steps": [{"type": "run"}]}),
        )
        .unwrap_err();
        assert!(e.message.starts_with("steps: not supported"), "{e}");
        assert!(parse_build_request(&json!({"name": "d", "base_image": "x", "steps": []})).is_ok());
    }

    #[test]
    fn empty_tags_are_invalid() {
        let e =
            parse_build_request(&json!({"name": "d", "base_image": "x", "tags": []})).unwrap_err();
        assert_eq!(e.code, "invalid_request");
        assert!(e.message.starts_with("tags:"));
    }

    #[test]
    fn auth_is_kept_out_of_the_definition() {
        let (d, auth) = parse_build_request(&json!({
            "name": "d", "base_image": "x",
            "base_image_auth": {"username": "u", "password": "hunter2"}
        }))
        .unwrap();
        assert_eq!(d.base_image_auth_kind.as_deref(), Some("basic"));
        assert!(!serde_json::to_string(&d).unwrap().contains("hunter2"));
        assert!(!format!("{auth:?}").contains("hunter2"));
    }

    #[test]
    fn selectors_parse() {
        let (d, _) = parse_build_request(
            &json!({"name": "d", "base": {"kind": "bun_image", "value": "1.2"}}),
        )
        .unwrap();
        assert_eq!(d.base_description(), "oven/bun:1.2");
        let e =
            parse_build_request(&json!({"name": "d", "base": {"kind": "bun_image"}})).unwrap_err();
        assert!(e.message.contains("base.value"));
    }
}
