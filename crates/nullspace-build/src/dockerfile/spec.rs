//! What a Dockerfile build is given (the Dockerfile, its context, named contexts, build
//! secrets, registry credentials), the server's policy, and the checks that run before
//! BuildKit does.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::BuildError;

use super::parse::{invalid, Dockerfile};
use super::BuildBackend;

/// Where the Dockerfile text comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DockerfileSource {
    /// Inline text (`dockerfile` in the API, `from_dockerfile_content` in the SDK).
    Content(String),
    /// A file on this machine (`--from-dockerfile PATH`).
    Path(PathBuf),
}

/// A secret's bytes: never printed, serialised, logged or hashed into a cache key.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    /// Wraps bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> SecretValue {
        SecretValue(bytes.into())
    }

    /// The bytes, for writing the temporary secret file.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretValue::new)
    }
}

/// Where a build secret's value comes from; the client resolves it before submitting.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum SecretSource {
    /// The value itself.
    Value {
        /// The value.
        value: SecretValue,
    },
    /// An environment variable of the client.
    Env {
        /// The variable's name.
        env: String,
    },
    /// A file on the client.
    File {
        /// The file.
        path: PathBuf,
    },
}

impl SecretSource {
    /// Reads the value (client side). The error names the secret id and the variable or file,
    /// never the value.
    pub fn resolve(&self, id: &str) -> Result<SecretValue, BuildError> {
        let field = format!("build_secrets.{id}");
        match self {
            SecretSource::Value { value } => Ok(value.clone()),
            SecretSource::Env { env } => std::env::var_os(env)
                .map(|v| SecretValue::new(v.into_encoded_bytes()))
                .ok_or_else(|| BuildError::InvalidRequest {
                    field,
                    message: format!("environment variable {env} is not set"),
                }),
            SecretSource::File { path } => {
                std::fs::read(path)
                    .map(SecretValue::new)
                    .map_err(|e| BuildError::InvalidRequest {
                        field,
                        message: format!("reading {}: {e}", path.display()),
                    })
            }
        }
    }
}

/// Credentials for one registry a Dockerfile pulls from (`registry_auth`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct RegistryAuth {
    /// Registry host (`registry.example.com`, `127.0.0.1:5001`); must match a `FROM` host.
    pub registry: String,
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: SecretValue,
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

pub use crate::buildkit::BuildkitPolicy;

/// Whether the build came from a Dockerfile or from declarative steps rendered into one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DockerfileKind {
    /// A user's Dockerfile.
    Dockerfile,
    /// Declarative steps rendered by [`crate::declarative::render`].
    Declarative,
}

impl DockerfileKind {
    /// The template's `source.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            DockerfileKind::Dockerfile => "dockerfile",
            DockerfileKind::Declarative => "declarative",
        }
    }
}

/// A Dockerfile build, beside the [`crate::BuildRequest`] that names, tags and sizes it.
#[derive(Clone, Debug)]
pub struct DockerfileSpec {
    /// The Dockerfile.
    pub dockerfile: DockerfileSource,
    /// The build context. Default: the Dockerfile's folder for a path, an empty dir for inline
    /// text. BuildKit applies its `.dockerignore`.
    pub context_dir: Option<PathBuf>,
    /// Named contexts (`--build-context NAME=DIR`), usable as `FROM NAME` / `COPY --from=NAME`.
    pub named_contexts: BTreeMap<String, PathBuf>,
    /// Named contexts that are images in an OCI layout (`NAME=oci-layout://DIR@DIGEST`), such
    /// as a template's image for steps on a template base.
    pub image_contexts: BTreeMap<String, String>,
    /// Build secrets by id (values already resolved), for `RUN --mount=type=secret,id=ID`.
    pub build_secrets: BTreeMap<String, SecretValue>,
    /// Credentials per registry; each must match a `FROM` host.
    pub registry_auth: Vec<RegistryAuth>,
    /// Build arguments (`--build-arg`): build envs, not persisted in the image's env.
    pub build_args: BTreeMap<String, String>,
    /// The backend the request named, if any; `native` is rejected.
    pub build_backend: Option<BuildBackend>,
    /// Source kind recorded in `template.json`.
    pub kind: DockerfileKind,
}

impl DockerfileSpec {
    /// A spec for `dockerfile` with everything else empty.
    pub fn new(dockerfile: DockerfileSource) -> DockerfileSpec {
        DockerfileSpec {
            dockerfile,
            context_dir: None,
            named_contexts: BTreeMap::new(),
            image_contexts: BTreeMap::new(),
            build_secrets: BTreeMap::new(),
            registry_auth: Vec::new(),
            build_args: BTreeMap::new(),
            build_backend: None,
            kind: DockerfileKind::Dockerfile,
        }
    }

    /// The Dockerfile's text.
    pub fn text(&self) -> Result<String, BuildError> {
        match &self.dockerfile {
            DockerfileSource::Content(text) => Ok(text.clone()),
            DockerfileSource::Path(path) => {
                std::fs::read_to_string(path).map_err(|e| BuildError::InvalidRequest {
                    field: "dockerfile".into(),
                    message: format!("reading {}: {e}", path.display()),
                })
            }
        }
    }

    /// The context dir: explicit, else the Dockerfile's folder (`None` for inline text with no
    /// context: the build gets an empty one).
    pub fn effective_context(&self) -> Option<PathBuf> {
        self.context_dir.clone().or_else(|| match &self.dockerfile {
            DockerfileSource::Path(p) => Some(
                p.parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            ),
            DockerfileSource::Content(_) => None,
        })
    }

    /// Every check that can run before BuildKit: backend, context dirs, names, and the
    /// Dockerfile against secrets, policy, credentials and the frontend's features.
    /// `heredocs_supported` is `None` when not yet known (the check is then skipped).
    pub fn validate(
        &self,
        policy: &BuildkitPolicy,
        heredocs_supported: Option<bool>,
    ) -> Result<Dockerfile, BuildError> {
        if self.build_backend == Some(BuildBackend::Native) {
            return Err(invalid(
                "build_backend",
                "Dockerfile builds use BuildKit; \"native\" is rejected (omit build_backend or use \"buildkit\")",
            ));
        }
        if let Some(dir) = self.effective_context() {
            check_dir("build_context", &dir)?;
        }
        for (name, dir) in &self.named_contexts {
            if !valid_context_name(name) {
                return Err(invalid(
                    "build_contexts",
                    format!("{name:?}: use lower-case letters, digits, '.', '_', '-' or '/'"),
                ));
            }
            check_dir(&format!("build_contexts.{name}"), dir)?;
        }
        for name in self.image_contexts.keys() {
            if !valid_context_name(name) || self.named_contexts.contains_key(name) {
                return Err(invalid(
                    "build_contexts",
                    format!("{name:?}: an invalid or duplicate context name"),
                ));
            }
        }
        for id in self.build_secrets.keys() {
            if !valid_secret_id(id) {
                return Err(invalid(
                    "build_secrets",
                    format!("{id:?}: use 1-128 letters, digits, '.', '_' or '-'"),
                ));
            }
        }
        for key in self.build_args.keys() {
            check_build_arg_key(key).map_err(|message| invalid("build_envs", message))?;
        }
        let text = self.text()?;
        let parsed = Dockerfile::parse(&text)?;
        check(&parsed, self, policy, heredocs_supported)?;
        Ok(parsed)
    }
}

fn check_dir(field: &str, dir: &Path) -> Result<(), BuildError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(invalid(
            field,
            format!("{} is not a directory", dir.display()),
        )),
        Err(e) => Err(invalid(field, format!("{}: {e}", dir.display()))),
    }
}

/// Whether `name` can name a BuildKit build context (`FROM name`, `COPY --from=name`).
pub fn valid_context_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c))
}

fn valid_secret_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Checks the name of a build env (a `--build-arg`): a variable name, and not one of
/// BuildKit's own `BUILDKIT_*` arguments, which choose the frontend image
/// (`BUILDKIT_SYNTAX`), cache-mount namespaces and more, and so would get around the checks
/// the server makes on the Dockerfile.
pub fn check_build_arg_key(key: &str) -> Result<(), String> {
    if !valid_env_key(key) {
        return Err(format!("{key:?} is not a valid variable name"));
    }
    if key.to_ascii_uppercase().starts_with("BUILDKIT_") {
        return Err(format!(
            "{key:?}: BUILDKIT_* build args configure BuildKit itself and are not accepted"
        ));
    }
    Ok(())
}

/// A shell/Dockerfile variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn valid_env_key(key: &str) -> bool {
    key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks the instructions of `parsed` against the spec and the policy.
fn check(
    parsed: &Dockerfile,
    spec: &DockerfileSpec,
    policy: &BuildkitPolicy,
    heredocs_supported: Option<bool>,
) -> Result<(), BuildError> {
    let at =
        |line: usize, message: String| invalid("dockerfile", format!("line {line}: {message}"));
    for instruction in &parsed.instructions {
        if !instruction.heredocs.is_empty() && heredocs_supported == Some(false) {
            return Err(at(
                instruction.line,
                format!(
                    "{} uses a heredoc (<<{}), which the configured BuildKit Dockerfile frontend does not support",
                    instruction.keyword, instruction.heredocs[0]
                ),
            ));
        }
        if instruction.keyword != "RUN" {
            continue;
        }
        for flag in leading_flags(&instruction.args) {
            let (name, value) = flag.split_once('=').unwrap_or((flag.as_str(), ""));
            match name {
                "--mount" => check_mount(value, spec, policy)
                    .map_err(|m| at(instruction.line, format!("RUN --mount={value}: {m}")))?,
                "--network" => {
                    if value != "none" && value != "default" {
                        return Err(at(
                            instruction.line,
                            format!("RUN --network={value} is not allowed (the build's network is set by internet_access)"),
                        ));
                    }
                }
                "--security" => {
                    if value != "sandbox" {
                        return Err(at(
                            instruction.line,
                            format!("RUN --security={value} is not allowed"),
                        ));
                    }
                }
                other => return Err(at(instruction.line, format!("unknown RUN flag {other}"))),
            }
        }
    }
    let mut contexts = spec.named_contexts.clone();
    contexts.extend(
        spec.image_contexts
            .keys()
            .map(|k| (k.clone(), PathBuf::new())),
    );
    for (line, reference) in parsed.registry_images(&contexts) {
        policy
            .from_addresses
            .check_registry_host(reference.api_host())
            .map_err(|e| at(line, format!("FROM {reference}: {e}")))?;
    }
    let hosts = parsed.from_hosts(&contexts);
    for auth in &spec.registry_auth {
        let wanted = nullspace_oci::reference::normalize_registry(auth.registry.trim());
        if !hosts.contains(&wanted) {
            return Err(invalid(
                "registry_auth",
                format!(
                    "registry {:?} matches no FROM host in the Dockerfile (FROM hosts: {})",
                    auth.registry,
                    if hosts.is_empty() {
                        "none".to_string()
                    } else {
                        hosts.iter().cloned().collect::<Vec<_>>().join(", ")
                    }
                ),
            ));
        }
    }
    Ok(())
}

/// The `--flag[=value]` words at the start of an instruction's arguments.
fn leading_flags(args: &str) -> Vec<String> {
    args.split_whitespace()
        .take_while(|w| w.starts_with("--"))
        .map(str::to_string)
        .collect()
}

/// Checks one `--mount=` value; the message is prefixed with the line by the caller.
fn check_mount(value: &str, spec: &DockerfileSpec, policy: &BuildkitPolicy) -> Result<(), String> {
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    for part in value.split(',') {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        fields.insert(
            k.trim().to_ascii_lowercase(),
            v.trim().trim_matches('"').to_string(),
        );
    }
    let kind = fields.get("type").map(String::as_str).unwrap_or("bind");
    match kind {
        "bind" | "tmpfs" => Ok(()),
        "cache" if policy.allow_cache_mounts => Ok(()),
        "cache" => Err("cache mounts are shared by every build on this server's BuildKit, so they are not allowed here (remove type=cache)".to_string()),
        "secret" => {
            let id = fields
                .get("id")
                .filter(|s| !s.is_empty())
                .cloned()
                .or_else(|| {
                    fields
                        .get("target")
                        .or_else(|| fields.get("dst"))
                        .or_else(|| fields.get("destination"))
                        .and_then(|t| t.rsplit('/').next().map(str::to_string))
                })
                .filter(|s| !s.is_empty())
                .ok_or_else(|| "a secret mount needs id= (or a target)".to_string())?;
            if spec.build_secrets.contains_key(&id) {
                Ok(())
            } else {
                Err(format!(
                    "no build secret {id:?} was supplied (add it to build_secrets, e.g. --build-secret-env {id}=VAR)"
                ))
            }
        }
        "ssh" => {
            if policy.allow_ssh {
                Ok(())
            } else {
                Err("SSH agent forwarding is not allowed by this server's policy".to_string())
            }
        }
        other => Err(format!("unknown mount type {other:?}")),
    }
}
