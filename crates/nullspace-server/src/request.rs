//! The build request body (spec §3.2), parsed strictly: unknown fields, and fields this server
//! cannot execute yet, are rejected by name rather than silently ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use nullspace_build::context::ContextManifest;
use nullspace_build::declarative::{copy_sources, RenderedDockerfile, Step};
use nullspace_build::dockerfile::{
    BuildBackend, DockerfileSource, DockerfileSpec, RegistryAuth, SecretValue,
};
use nullspace_build::engine_dockerfile::{declarative_spec, BuildkitOptions};
use nullspace_build::engine_template::template_steps_spec;
use nullspace_build::request::{parse_readiness, validate_name, validate_tag};
use nullspace_build::{BaseSelector, BuildError};
use nullspace_oci::Credentials;
use nullspace_rootfs::runtime::Readiness;
use serde_json::json;

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
    /// An inline Dockerfile (`dockerfile`), built with BuildKit with an empty context.
    Dockerfile {
        /// The Dockerfile text.
        content: String,
    },
}

impl Base {
    /// The source kind (`oci_import`, `template_base`).
    pub fn source_kind(&self) -> &'static str {
        match self {
            Base::Image { .. } => "oci_import",
            Base::Template { .. } => "template_base",
            Base::Dockerfile { .. } => "dockerfile",
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
    /// Declarative steps on an image base (built with BuildKit); `build_envs`, `runtime_envs`,
    /// `user` and `workdir` are folded in as steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    /// Ids of the request's build secrets, never their values (a retry must send them again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub build_secret_ids: Vec<String>,
    /// Registries of the request's `registry_auth`, never the credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registry_auth_hosts: Vec<String>,
    /// The uploaded build context (paths and blob digests) that `copy` steps or the
    /// Dockerfile read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_context: Option<ContextManifest>,
    /// `build_context`'s digest and file count, computed once (status polls show them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_summary: Option<(String, usize)>,
    /// Named build contexts of a Dockerfile build (`FROM name`, `COPY --from=name`), uploaded
    /// like `build_context`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub named_contexts: BTreeMap<String, ContextManifest>,
    /// The start command, replacing the image's (recorded in the runtime defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cmd: Option<String>,
    /// The readiness check (`readiness`, or `ready_cmd` as a `command` check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Readiness>,
}

impl BuildDefinition {
    /// The engine's request for an image base (`None` for template bases).
    pub fn engine_request(&self) -> nullspace_build::BuildRequest {
        let selector = match &self.base {
            Base::Image { selector } => selector.clone(),
            // Template bases never reach the image importer; the selector is a placeholder.
            Base::Template { reference } => BaseSelector::BaseImage(reference.clone()),
            // BuildKit reads the base from the Dockerfile's FROM lines.
            Base::Dockerfile { .. } => BaseSelector::DebianImage(None),
        };
        let mut request = nullspace_build::BuildRequest::new(&self.name, selector);
        request.tags = self.tags.clone();
        request.disk_mb = self.disk_mb;
        request.cpu_count = self.cpu_count;
        request.memory_mb = self.memory_mb;
        request.internet_access = self.internet_access;
        request.skip_cache = self.skip_cache;
        request.start_cmd = self.start_cmd.clone();
        request.readiness = self.readiness.clone();
        request
    }

    /// The image reference of an image base, as the user would read it.
    pub fn base_description(&self) -> String {
        match &self.base {
            Base::Image { selector } => selector
                .image_reference()
                .unwrap_or_else(|_| format!("{selector:?}")),
            Base::Template { reference } => format!("template {reference}"),
            Base::Dockerfile { .. } => "an inline Dockerfile (BuildKit)".to_string(),
        }
    }

    /// The source kind: `oci_import`, `template_base`, `dockerfile` or `declarative`.
    pub fn source_kind(&self) -> &'static str {
        match &self.base {
            Base::Image { .. } if self.build_backend == "buildkit" => "declarative",
            base => base.source_kind(),
        }
    }

    /// Whether the build needs request-time values that are held in memory only.
    pub fn needs_request_secrets(&self) -> bool {
        self.base_image_auth_kind.is_some()
            || !self.build_secret_ids.is_empty()
            || !self.registry_auth_hosts.is_empty()
    }
}

/// The request-time values of a build that are never stored: base-image credentials, build
/// secrets and registry credentials. `Debug` shows none of them.
#[derive(Clone, Default)]
pub struct RequestSecrets {
    /// `base_image_auth`.
    pub base_image_auth: Option<Credentials>,
    /// `build_secrets` by id.
    pub build_secrets: BTreeMap<String, SecretValue>,
    /// `registry_auth`.
    pub registry_auth: Vec<RegistryAuth>,
}

impl RequestSecrets {
    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.base_image_auth.is_none()
            && self.build_secrets.is_empty()
            && self.registry_auth.is_empty()
    }
}

impl std::fmt::Debug for RequestSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RequestSecrets(base_image_auth: {:?}, build_secrets: {:?}, registry_auth: {:?})",
            self.base_image_auth.as_ref().map(Credentials::kind),
            self.build_secrets.keys().collect::<Vec<_>>(),
            self.registry_auth
                .iter()
                .map(|a| a.registry.as_str())
                .collect::<Vec<_>>()
        )
    }
}

/// The BuildKit spec of a Dockerfile or declarative build (`None` for native builds), with
/// the request's secrets, and the rendered Dockerfile of a declarative one. Nothing here has
/// been checked: call `spec.validate`.
#[allow(clippy::result_large_err)] // `BuildError` is the engine's error type.
pub fn buildkit_spec(
    definition: &BuildDefinition,
    secrets: &RequestSecrets,
) -> Result<Option<(DockerfileSpec, Option<RenderedDockerfile>)>, BuildError> {
    let (mut spec, rendered) = match &definition.base {
        Base::Dockerfile { content } => (
            DockerfileSpec::new(DockerfileSource::Content(content.clone())),
            None,
        ),
        Base::Image { selector } if definition.build_backend == "buildkit" => {
            let (spec, rendered) = declarative_spec(selector, &definition.steps, None)?;
            (spec, Some(rendered))
        }
        Base::Template { .. } if definition.build_backend == "buildkit" => {
            let (spec, rendered) = template_steps_spec(&definition.steps, None)?;
            (spec, Some(rendered))
        }
        _ => return Ok(None),
    };
    spec.build_secrets = secrets.build_secrets.clone();
    spec.registry_auth = secrets.registry_auth.clone();
    spec.build_backend = Some(if definition.build_backend == "native" {
        BuildBackend::Native
    } else {
        BuildBackend::Buildkit
    });
    Ok(Some((spec, rendered)))
}

/// [`buildkit_spec`] checked as far as possible without BuildKit (policy, secrets against
/// `RUN --mount=type=secret`, registry credentials against `FROM` hosts...); errors name the
/// field or the Dockerfile line.
pub fn checked_buildkit_spec(
    definition: &BuildDefinition,
    secrets: &RequestSecrets,
) -> Result<
    Option<(
        DockerfileSpec,
        Option<RenderedDockerfile>,
        nullspace_build::dockerfile::Dockerfile,
    )>,
    ApiError,
> {
    let Some((spec, rendered)) = buildkit_spec(definition, secrets).map_err(api_error)? else {
        return Ok(None);
    };
    let parsed = spec
        .validate(&BuildkitOptions::from_env().policy, None)
        .map_err(api_error)?;
    Ok(Some((spec, rendered, parsed)))
}

fn api_error(error: BuildError) -> ApiError {
    match error {
        BuildError::InvalidRequest { field, message } => ApiError::invalid(&field, message),
        other => ApiError::invalid_body(other.to_string()),
    }
}

/// Parses `build_secrets`: `{"ID": "value"}`, `{"ID": {"value": "..."}}` or the SDK's
/// `[{"id": "ID", "value": "..."}]`. Values stay in memory.
pub fn parse_build_secrets(value: &Value) -> Result<BTreeMap<String, SecretValue>, ApiError> {
    let mut secrets = BTreeMap::new();
    let value_of = |id: &str, v: &Value| -> Result<SecretValue, ApiError> {
        match v {
            Value::String(s) => Ok(SecretValue::new(s.as_bytes().to_vec())),
            Value::Object(o) => match (o.get("value"), o.get("source")) {
                (Some(Value::String(s)), None)
                | (Some(Value::String(s)), Some(Value::String(_))) => {
                    Ok(SecretValue::new(s.as_bytes().to_vec()))
                }
                _ => Err(ApiError::invalid(
                    &format!("build_secrets.{id}"),
                    "must be a string value (env and file sources are resolved by the client)",
                )),
            },
            _ => Err(ApiError::invalid(
                &format!("build_secrets.{id}"),
                "must be a string",
            )),
        }
    };
    match value {
        Value::Null => {}
        Value::Object(map) => {
            for (id, v) in map {
                secrets.insert(id.clone(), value_of(id, v)?);
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let id = item
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ApiError::invalid(&format!("build_secrets[{index}].id"), "is required")
                    })?
                    .to_string();
                if let Some(unknown) = item.as_object().and_then(|o| {
                    o.keys()
                        .find(|k| !["id", "value", "source"].contains(&k.as_str()))
                }) {
                    return Err(ApiError::invalid(
                        &format!("build_secrets[{index}].{unknown}"),
                        "unknown field (expected id and value)",
                    ));
                }
                let v = item.get("value").ok_or_else(|| {
                    ApiError::invalid(&format!("build_secrets.{id}"), "value is required")
                })?;
                if secrets.insert(id.clone(), value_of(&id, v)?).is_some() {
                    return Err(ApiError::invalid(
                        &format!("build_secrets.{id}"),
                        "is given twice",
                    ));
                }
            }
        }
        _ => {
            return Err(ApiError::invalid(
                "build_secrets",
                "must be an object {id: value} or a list of {id, value}",
            ))
        }
    }
    Ok(secrets)
}

/// Parses `registry_auth`: `[{registry, username, password}]`.
pub fn parse_registry_auth(value: &Value) -> Result<Vec<RegistryAuth>, ApiError> {
    let items = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => {
            return Err(ApiError::invalid(
                "registry_auth",
                "must be a list of {registry, username, password}",
            ))
        }
    };
    let mut out = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let object = item.as_object().ok_or_else(|| {
            ApiError::invalid(&format!("registry_auth[{index}]"), "must be an object")
        })?;
        if let Some(unknown) = object
            .keys()
            .find(|k| !["registry", "username", "password"].contains(&k.as_str()))
        {
            return Err(ApiError::invalid(
                &format!("registry_auth[{index}].{unknown}"),
                "unknown field (expected registry, username, password)",
            ));
        }
        let field = |name: &str| -> Result<String, ApiError> {
            match object.get(name).and_then(Value::as_str) {
                Some(s) if !s.is_empty() => Ok(s.to_string()),
                _ => Err(ApiError::invalid(
                    &format!("registry_auth[{index}].{name}"),
                    "is required (a non-empty string)",
                )),
            }
        };
        out.push(RegistryAuth {
            registry: field("registry")?,
            username: field("username")?,
            password: SecretValue::new(field("password")?.into_bytes()),
        });
    }
    Ok(out)
}

/// Parses `steps` (the serde shape of [`Step`]).
fn parse_steps(value: &Value) -> Result<Vec<Step>, ApiError> {
    let items = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => return Err(ApiError::invalid("steps", "must be a list of step objects")),
    };
    let mut steps = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let field = format!("steps[{index}]");
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid(&format!("{field}.type"), "is required (a string)"))?;
        let step: Step = serde_json::from_value(item.clone())
            .map_err(|e| ApiError::invalid(&field, format!("{kind}: {e}")))?;
        steps.push(step);
    }
    Ok(steps)
}

fn string_map(field: &str, value: &Value) -> Result<BTreeMap<String, String>, ApiError> {
    let object = value
        .as_object()
        .ok_or_else(|| ApiError::invalid(field, "must be an object of strings"))?;
    object
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            _ => Err(ApiError::invalid(
                &format!("{field}.{k}"),
                "must be a string",
            )),
        })
        .collect()
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
    "dockerfile",
    "steps",
    "build_envs",
    "runtime_envs",
    "user",
    "workdir",
    "build_secrets",
    "registry_auth",
    "build_context",
    "build_contexts",
    "start_cmd",
    "ready_cmd",
    "readiness",
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
    let selector = match kind {
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
        "dockerfile" => {
            return Err(ApiError::invalid(
                "base.kind",
                "send the Dockerfile's text in the dockerfile field",
            ))
        }
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
pub fn parse_build_request(body: &Value) -> Result<(BuildDefinition, RequestSecrets), ApiError> {
    let object: &Map<String, Value> = body
        .as_object()
        .ok_or_else(|| ApiError::invalid_body("the request body must be a JSON object"))?;
    for key in object.keys() {
        if !SUPPORTED.contains(&key.as_str()) {
            return Err(ApiError::invalid(key, "unknown field"));
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
    let present = |field: &str| object.get(field).filter(|v| !is_empty(v));
    let dockerfile = present("dockerfile")
        .map(|v| string("dockerfile", v))
        .transpose()?;
    let base = match (object.get("base_image"), object.get("base")) {
        _ if dockerfile.is_some() => {
            if let Some(field) = ["base_image", "base"]
                .into_iter()
                .find(|f| present(f).is_some())
            {
                return Err(ApiError::invalid(
                    field,
                    "a Dockerfile names its base in FROM; send either dockerfile or a base",
                ));
            }
            Base::Dockerfile {
                content: dockerfile.clone().unwrap_or_default(),
            }
        }
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
    let requested_backend = match object.get("build_backend") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "native" || s == "buildkit" => Some(s.as_str()),
        Some(_) => {
            return Err(ApiError::invalid(
                "build_backend",
                "must be \"native\" or \"buildkit\"",
            ))
        }
    };
    // Declarative steps, with the top-level build_envs first and the runtime defaults last.
    let mut steps = Vec::new();
    if let Some(envs) = present("build_envs") {
        steps.push(Step::SetBuildEnvs {
            envs: string_map("build_envs", envs)?,
        });
    }
    steps.extend(parse_steps(object.get("steps").unwrap_or(&Value::Null))?);
    if let Some(envs) = present("runtime_envs") {
        steps.push(Step::SetRuntimeEnvs {
            envs: string_map("runtime_envs", envs)?,
        });
    }
    if let Some(workdir) = present("workdir") {
        steps.push(Step::SetWorkdir {
            path: string("workdir", workdir)?,
        });
    }
    if let Some(user) = present("user") {
        steps.push(Step::SetUser {
            user: string("user", user)?,
        });
    }
    if !steps.is_empty() {
        let field = ["steps", "build_envs", "runtime_envs", "workdir", "user"]
            .into_iter()
            .find(|f| present(f).is_some())
            .unwrap_or("steps");
        match &base {
            Base::Dockerfile { .. } => {
                return Err(ApiError::invalid(
                    field,
                    "a Dockerfile build takes no declarative steps or defaults; write them in the Dockerfile (ENV, USER, WORKDIR, RUN)",
                ))
            }
            Base::Template { .. } | Base::Image { .. } => {}
        }
        if requested_backend == Some("native") {
            return Err(ApiError::invalid(
                "build_backend",
                "declarative steps are built with BuildKit by this server; omit build_backend or use \"buildkit\"",
            ));
        }
    }
    if requested_backend == Some("buildkit")
        && matches!(base, Base::Template { .. })
        && steps.is_empty()
    {
        return Err(ApiError::invalid(
            "build_backend",
            "a template base without steps reuses the parent's rootfs; BuildKit runs only steps on it",
        ));
    }
    let buildkit = match &base {
        // `native` is kept so that the Dockerfile checks reject it with their message.
        Base::Dockerfile { .. } => requested_backend != Some("native"),
        _ => !steps.is_empty() || requested_backend == Some("buildkit"),
    };
    let build_backend = if buildkit { "buildkit" } else { "native" }.to_string();
    let build_secrets = parse_build_secrets(object.get("build_secrets").unwrap_or(&Value::Null))?;
    let registry_auth = parse_registry_auth(object.get("registry_auth").unwrap_or(&Value::Null))?;
    if !buildkit && !matches!(base, Base::Dockerfile { .. }) {
        if !build_secrets.is_empty() {
            return Err(ApiError::invalid(
                "build_secrets",
                "native builds reject build secrets; they are for BuildKit builds (dockerfile or steps, RUN --mount=type=secret)",
            ));
        }
        if !registry_auth.is_empty() {
            return Err(ApiError::invalid(
                "registry_auth",
                "registry_auth is for BuildKit builds (dockerfile or steps); use base_image_auth for image imports",
            ));
        }
    }
    let build_context = parse_build_context(present("build_context"), &base, &steps)?;
    let named_contexts = parse_named_contexts(present("build_contexts"), &base)?;
    let start_cmd = present("start_cmd")
        .map(|v| string("start_cmd", v))
        .transpose()?;
    if let Some(cmd) = &start_cmd {
        if cmd.trim().is_empty() || cmd.contains('\0') {
            return Err(ApiError::invalid(
                "start_cmd",
                "must be a non-empty command",
            ));
        }
    }
    let readiness = match (present("ready_cmd"), present("readiness")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "ready_cmd",
                "send either ready_cmd or readiness, not both",
            ))
        }
        (Some(cmd), None) => Some(
            parse_readiness(&json!({"kind": "command", "command": cmd}), "ready_cmd")
                .map_err(api_error)?,
        ),
        (None, Some(object)) => Some(parse_readiness(object, "readiness").map_err(api_error)?),
        (None, None) => None,
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
        steps,
        build_secret_ids: build_secrets.keys().cloned().collect(),
        registry_auth_hosts: registry_auth.iter().map(|a| a.registry.clone()).collect(),
        context_summary: build_context.as_ref().map(|c| (c.digest(), c.file_count())),
        build_context,
        named_contexts,
        start_cmd,
        readiness,
    };
    let secrets = RequestSecrets {
        base_image_auth: auth.map(|a| a.0),
        build_secrets,
        registry_auth,
    };
    checked_buildkit_spec(&definition, &secrets)?;
    Ok((definition, secrets))
}

/// Largest total of file content a build's contexts may hold: `NULLSPACE_MAX_CONTEXT_BYTES`,
/// default 16 GiB.
fn max_context_bytes() -> u64 {
    std::env::var("NULLSPACE_MAX_CONTEXT_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(16 << 30)
}

/// Refuses contexts holding more than [`max_context_bytes`] of file content.
fn check_context_size(field: &str, manifests: &[&ContextManifest]) -> Result<(), ApiError> {
    let total = manifests
        .iter()
        .map(|m| m.total_bytes())
        .fold(0u64, u64::saturating_add);
    let limit = max_context_bytes();
    if total > limit {
        return Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "file_upload_limit_exceeded",
            format!("{field}: the build context holds {total} bytes; at most {limit} are accepted"),
        ));
    }
    Ok(())
}

/// Parses `build_contexts` (`{"name": {"entries": [...]}}`), which only Dockerfile builds read.
fn parse_named_contexts(
    value: Option<&Value>,
    base: &Base,
) -> Result<BTreeMap<String, ContextManifest>, ApiError> {
    let Some(value) = value else {
        return Ok(BTreeMap::new());
    };
    if !matches!(base, Base::Dockerfile { .. }) {
        return Err(ApiError::invalid(
            "build_contexts",
            "named contexts are for Dockerfile builds (FROM name, COPY --from=name)",
        ));
    }
    let object = value.as_object().ok_or_else(|| {
        ApiError::invalid("build_contexts", "must be an object of build contexts")
    })?;
    let mut contexts = BTreeMap::new();
    for (name, manifest) in object {
        let field = format!("build_contexts.{name}");
        if !nullspace_build::dockerfile::valid_context_name(name) {
            return Err(ApiError::invalid(
                &field,
                "use lower-case letters, digits, '.', '_', '-' or '/'",
            ));
        }
        let manifest: ContextManifest = serde_json::from_value(manifest.clone())
            .map_err(|e| ApiError::invalid(&field, e.to_string()))?;
        manifest.validate().map_err(|e| {
            ApiError::invalid(
                &field,
                strip(&e.to_string(), "build_context.entries")
                    .trim_start_matches("invalid request: "),
            )
        })?;
        contexts.insert(name.clone(), manifest);
    }
    check_context_size("build_contexts", &contexts.values().collect::<Vec<_>>())?;
    Ok(contexts)
}

/// Parses `build_context` (`{"entries": [...]}`, see [`ContextManifest`]) and checks it
/// against what reads it: every `copy` source must be in it, and only copies or a Dockerfile
/// may use one. Whether its blobs were uploaded is checked against the owner's store later.
fn parse_build_context(
    value: Option<&Value>,
    base: &Base,
    steps: &[Step],
) -> Result<Option<ContextManifest>, ApiError> {
    let sources = copy_sources(steps);
    let Some(value) = value else {
        if let Some((field, _)) = sources.first() {
            return Err(ApiError::invalid(
                field,
                "copy reads the build context, and the request has none: upload the files and send build_context (the SDK does both)",
            ));
        }
        return Ok(None);
    };
    let manifest: ContextManifest = serde_json::from_value(value.clone())
        .map_err(|e| ApiError::invalid("build_context", e.to_string()))?;
    manifest.validate().map_err(api_error)?;
    check_context_size("build_context", &[&manifest])?;
    if sources.is_empty() && !matches!(base, Base::Dockerfile { .. }) {
        return Err(ApiError::invalid(
            "build_context",
            "only copy steps and Dockerfile builds read a build context; this request has neither",
        ));
    }
    for (field, source) in &sources {
        if !manifest.covers(source) {
            return Err(ApiError::invalid(
                field,
                format!("{source:?} is not in the uploaded build context"),
            ));
        }
    }
    Ok(Some(manifest))
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
        let (d, secrets) =
            parse_build_request(&json!({"name": "demo", "base_image": "debian:bookworm"})).unwrap();
        assert_eq!(d.tags, vec!["default"]);
        assert!(d.internet_access);
        assert!(secrets.is_empty());
        assert_eq!(d.build_backend, "native");
    }

    #[test]
    fn unknown_and_unsupported_fields_are_named() {
        let e =
            parse_build_request(&json!({"name": "d", "base_image": "x", "bogus": 1})).unwrap_err();
        assert!(e.message.contains("bogus"), "{e}");
        let (d, _) = parse_build_request(&json!({
            "name": "d", "base_image": "x", "start_cmd": "sleep 1",
            "readiness": {"kind": "tcp", "port": 8080, "interval_ms": 250},
        }))
        .unwrap();
        assert_eq!(d.start_cmd.as_deref(), Some("sleep 1"));
        let readiness = d.readiness.unwrap();
        assert_eq!(
            (readiness.kind.as_str(), readiness.port),
            ("tcp", Some(8080))
        );
        assert_eq!(readiness.interval_ms, 250);
        for (bad, needle) in [
            (
                json!({"kind": "http", "url": "https://localhost:8080/"}),
                "only http://",
            ),
            (
                json!({"kind": "http", "url": "http://example.com:80/"}),
                "the host must be",
            ),
            (
                json!({"kind": "http", "url": "http://localhost/"}),
                "explicit",
            ),
            (
                json!({"kind": "http", "url": "http://localhost:80/?a=1"}),
                "query",
            ),
            (json!({"kind": "tcp", "port": 0}), "readiness.port"),
            (json!({"kind": "file", "path": "rel"}), "absolute"),
            (json!({"kind": "dns"}), "unknown kind"),
            (
                json!({"kind": "tcp", "port": 1, "bogus": 1}),
                "readiness.bogus",
            ),
        ] {
            let e = parse_build_request(&json!({"name": "d", "base_image": "x", "readiness": bad}))
                .unwrap_err();
            assert!(e.message.contains(needle), "{e}");
        }
        let e = parse_build_request(&json!({
            "name": "d", "base_image": "x", "ready_cmd": "true",
            "readiness": {"kind": "tcp", "port": 1},
        }))
        .unwrap_err();
        assert!(e.message.starts_with("ready_cmd"), "{e}");
        let e = parse_build_request(
            &json!({"name": "d", "base_image": "x", "steps": [{"type": "run"}]}),
        )
        .unwrap_err();
        assert!(e.message.starts_with("steps[0]"), "{e}");
        let (d, _) =
            parse_build_request(&json!({"name": "d", "base_image": "x", "steps": []})).unwrap();
        assert_eq!(d.build_backend, "native");
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
    fn dockerfile_and_steps() {
        let (d, secrets) = parse_build_request(&json!({
            "name": "d",
            "dockerfile": "FROM debian:bookworm\nRUN --mount=type=secret,id=tok cat /run/secrets/tok\n",
            "build_secrets": [{"id": "tok", "value": "hunter2"}],
        }))
        .unwrap();
        assert_eq!(d.build_backend, "buildkit");
        assert_eq!(d.source_kind(), "dockerfile");
        assert_eq!(d.build_secret_ids, vec!["tok"]);
        assert!(!serde_json::to_string(&d).unwrap().contains("hunter2"));
        assert!(!format!("{secrets:?}").contains("hunter2"));
        let e = parse_build_request(&json!({
            "name": "d",
            "dockerfile": "FROM debian:bookworm\nRUN --mount=type=secret,id=tok cat /run/secrets/tok\n",
        }))
        .unwrap_err();
        assert!(e.message.contains("tok"), "{e}");
        let e = parse_build_request(&json!({
            "name": "d", "dockerfile": "FROM debian:bookworm\n", "build_backend": "native",
        }))
        .unwrap_err();
        assert!(e.message.starts_with("build_backend"), "{e}");
        let e = parse_build_request(&json!({
            "name": "d", "base_image": "debian:bookworm", "build_secrets": {"a": "b"},
        }))
        .unwrap_err();
        assert!(e.message.starts_with("build_secrets"), "{e}");
        let e = parse_build_request(&json!({
            "name": "d", "base_image": "debian:bookworm",
            "steps": [{"type": "copy", "src": "a", "dst": "/a"}],
        }))
        .unwrap_err();
        assert!(
            e.message
                .starts_with("steps[0].src: copy reads the build context"),
            "{e}"
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        let context = json!({"entries": [
            {"type": "file", "path": "dir/app.py", "digest": digest, "size": 3, "mode": 420},
        ]});
        let e = parse_build_request(&json!({
            "name": "d", "base_image": "debian:bookworm",
            "steps": [{"type": "copy", "src": "./other", "dst": "/a"}],
            "build_context": context,
        }))
        .unwrap_err();
        assert!(
            e.message.contains("not in the uploaded build context"),
            "{e}"
        );
        let (d, _) = parse_build_request(&json!({
            "name": "d", "base_image": "debian:bookworm",
            "steps": [{"type": "copy", "src": "./dir", "dst": "/a"}],
            "build_context": context,
        }))
        .unwrap();
        assert_eq!(d.build_context.map(|c| c.file_count()), Some(1));
        let e = parse_build_request(&json!({
            "name": "d", "base_image": "debian:bookworm", "build_context": context,
        }))
        .unwrap_err();
        assert!(e.message.starts_with("build_context:"), "{e}");
        let (d, _) = parse_build_request(&json!({
            "name": "d", "base": {"kind": "debian_image"},
            "steps": [{"type": "run_cmd", "cmd": "echo hi > /hello"}],
            "workdir": "/srv", "runtime_envs": {"A": "1"},
        }))
        .unwrap();
        assert_eq!(d.build_backend, "buildkit");
        assert_eq!(d.source_kind(), "declarative");
        assert_eq!(d.steps.len(), 3);
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
